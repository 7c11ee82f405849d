# Finds the ggml that llama-cpp-python installed (one ggml per process).
# Override with -Dggml_DIR=<prefix>/lib/cmake/ggml.
if(NOT ggml_DIR)
    find_package(Python3 COMPONENTS Interpreter)
    if(Python3_FOUND)
        execute_process(
            COMMAND "${Python3_EXECUTABLE}" -c
                "import importlib.util, os; s = importlib.util.find_spec('llama_cpp'); print(os.path.dirname(os.path.dirname(s.origin)) if s else '')"
            OUTPUT_VARIABLE _rerope_site OUTPUT_STRIP_TRAILING_WHITESPACE)
        if(_rerope_site AND EXISTS "${_rerope_site}/lib/cmake/ggml")
            set(ggml_DIR "${_rerope_site}/lib/cmake/ggml")
            set(GGML_REROPE_SITE_PACKAGES "${_rerope_site}")
        endif()
    endif()
endif()
find_package(ggml CONFIG)
if(NOT ggml_FOUND)
    message(FATAL_ERROR
        "ggml not found. Install llama-cpp-python==0.3.36 first (pip install llama-cpp-python==0.3.36), "
        "or pass -Dggml_DIR=<prefix>/lib/cmake/ggml.")
endif()
message(STATUS "ggml: ${ggml_DIR}")
