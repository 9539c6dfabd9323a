# ragserve_kvr_core: the gRPC-free KV retrieval library (KV store, hybrid attention). Every
# services/kvr/*.cc except main.cc, the gRPC adapter and client (service*, *_grpc*) and the engine
# KvSources (retrieval_kv_source, device_retrieval_source: they need the engine).
file(GLOB RAGSERVE_KVR_CORE_SRCS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cc)
list(FILTER RAGSERVE_KVR_CORE_SRCS EXCLUDE
     REGEX ".*/(main|service[^/]*|[^/]*_grpc[^/]*|retrieval_kv_source|device_retrieval_source)\\.cc$")
add_library(ragserve_kvr_core ${RAGSERVE_KVR_CORE_SRCS})
target_link_libraries(ragserve_kvr_core PUBLIC ragserve_index ragserve_kernels ragserve_common
                      OpenMP::OpenMP_CXX ${BLAS_LIBRARIES})
target_compile_options(ragserve_kvr_core PRIVATE -O3)
