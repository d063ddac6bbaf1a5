# saga_cc_library(NAME n [HDRS ...] [SRCS ...] [DEPS ...] [PRIVATE_DEPS ...])
#   Creates saga_<n> with the alias saga::<n>, compiled with the project's warnings.
# saga_cc_test(NAME n SRCS ... [DEPS ...] [LABELS ...])
#   A GoogleTest binary registered with CTest, each test carrying the labels.

add_library(saga_warnings INTERFACE)
target_compile_options(saga_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Woverloaded-virtual
  -Wno-missing-field-initializers
  $<$<BOOL:${SAGA_WERROR}>:-Werror>)

function(saga_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "HDRS;SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  if(ARG_SRCS)
    add_library(saga_${ARG_NAME} STATIC ${ARG_SRCS} ${ARG_HDRS})
    target_link_libraries(saga_${ARG_NAME} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS} saga_warnings)
    target_include_directories(saga_${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  else()
    add_library(saga_${ARG_NAME} INTERFACE ${ARG_HDRS})
    target_link_libraries(saga_${ARG_NAME} INTERFACE ${ARG_DEPS})
    target_include_directories(saga_${ARG_NAME} INTERFACE ${PROJECT_SOURCE_DIR})
  endif()
  add_library(saga::${ARG_NAME} ALIAS saga_${ARG_NAME})
endfunction()

function(saga_cc_test)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT SAGA_BUILD_TESTS)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main saga_warnings)
  target_include_directories(${ARG_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  gtest_discover_tests(${ARG_NAME}
    PROPERTIES LABELS "${ARG_LABELS}"
    DISCOVERY_TIMEOUT 60)
endfunction()
