#----------------------------------------------------------------
# Generated CMake target import file for configuration "Release".
#----------------------------------------------------------------

# Commands may need to know the format version.
set(CMAKE_IMPORT_FILE_VERSION 1)

# Import target "ggml_rerope::ggml_rerope" for configuration "Release"
set_property(TARGET ggml_rerope::ggml_rerope APPEND PROPERTY IMPORTED_CONFIGURATIONS RELEASE)
set_target_properties(ggml_rerope::ggml_rerope PROPERTIES
  IMPORTED_LOCATION_RELEASE "${_IMPORT_PREFIX}/lib/libggml_rerope.so.0.1.0"
  IMPORTED_SONAME_RELEASE "libggml_rerope.so.0"
  )

list(APPEND _cmake_import_check_targets ggml_rerope::ggml_rerope )
list(APPEND _cmake_import_check_files_for_ggml_rerope::ggml_rerope "${_IMPORT_PREFIX}/lib/libggml_rerope.so.0.1.0" )

# Commands beyond this point should not need to know the version.
set(CMAKE_IMPORT_FILE_VERSION)
