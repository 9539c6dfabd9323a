# ragserve_index_core: the gRPC-free index service library (collections in RocksDB, embedders).
# Every services/index/*.cc except main.cc and the gRPC adapter (service*, *_grpc*).
file(GLOB RAGSERVE_INDEX_CORE_SRCS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cc)
list(FILTER RAGSERVE_INDEX_CORE_SRCS EXCLUDE REGEX ".*/(main|service[^/]*|[^/]*_grpc[^/]*)\\.cc$")
add_library(ragserve_index_core ${RAGSERVE_INDEX_CORE_SRCS})
target_link_libraries(ragserve_index_core PUBLIC ragserve_index ragserve_common RocksDB::rocksdb
                      nlohmann_json::nlohmann_json PkgConfig::XXHASH)
