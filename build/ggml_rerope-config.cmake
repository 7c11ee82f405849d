
####### Expanded from @PACKAGE_INIT@ by configure_package_config_file() #######
####### Any changes to this file will be overwritten by the next CMake run ####
####### The input file was ggml_rerope-config.cmake.in                            ########

get_filename_component(PACKAGE_PREFIX_DIR "${CMAKE_CURRENT_LIST_DIR}/../../../" ABSOLUTE)

macro(set_and_check _var _file)
  set(${_var} "${_file}")
  if(NOT EXISTS "${_file}")
    message(FATAL_ERROR "File or directory ${_file} referenced by variable ${_var} does not exist !")
  endif()
endmacro()

macro(check_required_components _NAME)
  foreach(comp ${${_NAME}_FIND_COMPONENTS})
    if(NOT ${_NAME}_${comp}_FOUND)
      if(${_NAME}_FIND_REQUIRED_${comp})
        set(${_NAME}_FOUND FALSE)
      endif()
    endif()
  endforeach()
endmacro()

####################################################################################
# ggml_rerope links the ggml it was built against (llama-cpp-python's by default).
include(CMakeFindDependencyMacro)
if(NOT ggml_DIR)
    set(ggml_DIR "/work/venv/lib/python3.11/site-packages/lib/cmake/ggml")
endif()
find_dependency(ggml CONFIG)
include("${CMAKE_CURRENT_LIST_DIR}/ggml_rerope-targets.cmake")
check_required_components(ggml_rerope)
