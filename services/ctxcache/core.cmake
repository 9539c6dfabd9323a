# ragserve_ctxcache_core: the gRPC-free context-cache library (KV blocks, cache keys, RAM LRU +
# RocksDB disk tier, single-flight). Every services/ctxcache/*.cc except main.cc and the gRPC
# adapter (service*, *_grpc*).
file(GLOB RAGSERVE_CTXCACHE_CORE_SRCS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cc)
list(FILTER RAGSERVE_CTXCACHE_CORE_SRCS EXCLUDE REGEX ".*/(main|service[^/]*|[^/]*_grpc[^/]*|ape_[^/]*)\\.cc$")
add_library(ragserve_ctxcache_core ${RAGSERVE_CTXCACHE_CORE_SRCS})
target_link_libraries(ragserve_ctxcache_core PUBLIC ragserve_common ragserve_kernels RocksDB::rocksdb
                      PkgConfig::XXHASH)
