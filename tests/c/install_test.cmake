# Installs the built library into WORK_DIR/prefix, builds examples/ against it as an
# outside project would (find_package and pkg-config), and runs attention_graph.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(run)
    execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "failed (${rc}): ${ARGV}")
    endif()
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f include/ggml_rerope.h include/ggml_rerope_runtime.h lib/cmake/ggml_rerope/ggml_rerope-config.cmake
          lib/pkgconfig/ggml_rerope.pc)
    if(NOT EXISTS ${prefix}/${f})
        message(FATAL_ERROR "not installed: ${f}")
    endif()
endforeach()

run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_PREFIX_PATH=${prefix} -Dggml_DIR=${ggml_DIR} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/attention_graph 97 16)
run(${WORK_DIR}/build/attention_graph 200 1)

# pkg-config: the flags it gives must compile and link the same program.
find_program(PKG_CONFIG pkg-config)
if(PKG_CONFIG)
    set(ENV{PKG_CONFIG_PATH} ${prefix}/lib/pkgconfig)
    execute_process(COMMAND ${PKG_CONFIG} --cflags --libs ggml_rerope OUTPUT_VARIABLE flags
                    OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR "pkg-config --cflags --libs ggml_rerope failed")
    endif()
    separate_arguments(flags UNIX_COMMAND "${flags}")
    run(cc ${SOURCE_DIR}/examples/attention_graph.c -o ${WORK_DIR}/attention_graph_pc ${flags} -lm)
    run(${WORK_DIR}/attention_graph_pc 50 8)
else()
    message(STATUS "pkg-config not found: the pkg-config check was not run")
endif()
