# Installation. Two layouts:
#  - Python wheel (scikit-build-core sets SKBUILD): the library goes next to the
#    ggml_rerope package and finds llama-cpp-python's ggml through its RUNPATH.
#  - C prefix (cmake --install): library, headers, CMake package config
#    (find_package(ggml_rerope) -> ggml_rerope::ggml_rerope) and pkg-config file.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

get_target_property(_ggml_lib ggml::ggml IMPORTED_LOCATION)
if(NOT _ggml_lib)
    get_target_property(_ggml_lib ggml::ggml IMPORTED_LOCATION_RELEASE)
endif()
get_filename_component(GGML_REROPE_GGML_LIBDIR "${_ggml_lib}" DIRECTORY)
get_filename_component(GGML_REROPE_GGML_PREFIX "${ggml_DIR}/../../.." ABSOLUTE)

if(SKBUILD)
    set_target_properties(ggml_rerope PROPERTIES INSTALL_RPATH "$ORIGIN/../llama_cpp/lib;$ORIGIN/../lib")
    install(TARGETS ggml_rerope LIBRARY DESTINATION ggml_rerope NAMELINK_SKIP PUBLIC_HEADER DESTINATION ggml_rerope/include)
else()
    set_target_properties(ggml_rerope PROPERTIES INSTALL_RPATH "${GGML_REROPE_GGML_LIBDIR}")
    install(TARGETS ggml_rerope EXPORT ggml_rerope-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    install(EXPORT ggml_rerope-targets NAMESPACE ggml_rerope::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ggml_rerope)
    configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ggml_rerope-config.cmake.in
        ${PROJECT_BINARY_DIR}/ggml_rerope-config.cmake
        INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ggml_rerope)
    write_basic_package_version_file(${PROJECT_BINARY_DIR}/ggml_rerope-config-version.cmake
        COMPATIBILITY SameMajorVersion)
    install(FILES ${PROJECT_BINARY_DIR}/ggml_rerope-config.cmake
                  ${PROJECT_BINARY_DIR}/ggml_rerope-config-version.cmake
            DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ggml_rerope)
    configure_file(${PROJECT_SOURCE_DIR}/cmake/ggml_rerope.pc.in ${PROJECT_BINARY_DIR}/ggml_rerope.pc @ONLY)
    install(FILES ${PROJECT_BINARY_DIR}/ggml_rerope.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
