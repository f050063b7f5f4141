# `cmake --install`: the programs, the client library with its headers, a
# pkg-config file and a CMake package for it, man pages generated from the
# programs' --help, a systemd unit for trainbusd, and the documentation.
# Included by the top CMakeLists.txt once every target exists.
#
#   TB_SYSTEMD_UNIT_DIR  where the unit goes (default lib/systemd/system under
#                        the prefix; a packager may give /lib/systemd/system)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# ---- programs ---------------------------------------------------------------
install(TARGETS trainbusd trainbus RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# ---- the client library ------------------------------------------------------
# trainbus_client (clients/lib) is the shared library with the protocol built
# in; its headers are the client's, the protocol's and the version.
install(
  TARGETS trainbus_client
  EXPORT trainbusTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/clients/include/trainbus/client.h
              ${PROJECT_SOURCE_DIR}/protocol/include/trainbus/protocol.h
              ${PROJECT_SOURCE_DIR}/protocol/include/trainbus/proto_limits.h
              ${PROJECT_BINARY_DIR}/generated/trainbus/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/trainbus)

# Files that name installed paths are written when installing, straight to
# where they go, so that the prefix is the one installed to (`cmake --install
# build --prefix DIR`), not the one configured, and two installs at once
# (the tests) do not share a file.
function(tb_configure_at_install in dir out)
  install(
    CODE "
    foreach(d BINDIR LIBDIR INCLUDEDIR)
      if(IS_ABSOLUTE \"\${CMAKE_INSTALL_\${d}}\")
        set(TB_FULL_\${d} \"\${CMAKE_INSTALL_\${d}}\")
      else()
        set(TB_FULL_\${d} \"\${CMAKE_INSTALL_PREFIX}/\${CMAKE_INSTALL_\${d}}\")
      endif()
    endforeach()
    set(CMAKE_INSTALL_PREFIX_AT_INSTALL \"\${CMAKE_INSTALL_PREFIX}\")
    set(PROJECT_VERSION ${PROJECT_VERSION})
    if(IS_ABSOLUTE \"${dir}\")
      set(to \"\$ENV{DESTDIR}${dir}/${out}\")
    else()
      set(to \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${dir}/${out}\")
    endif()
    message(STATUS \"Installing: \${to}\")
    configure_file(${PROJECT_SOURCE_DIR}/cmake/${in} \"\${to}\" @ONLY)
    list(APPEND CMAKE_INSTALL_MANIFEST_FILES \"\${to}\")")
endfunction()
install(CODE "
  set(CMAKE_INSTALL_BINDIR ${CMAKE_INSTALL_BINDIR})
  set(CMAKE_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(CMAKE_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})")

# pkg-config: `pkg-config --cflags --libs trainbus-client`.
tb_configure_at_install(trainbus-client.pc.in ${CMAKE_INSTALL_LIBDIR}/pkgconfig trainbus-client.pc)

# CMake: find_package(trainbus) gives the target trainbus::client.
set(TB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/trainbus)
install(EXPORT trainbusTargets NAMESPACE trainbus:: DESTINATION ${TB_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/trainbusConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/trainbusConfig.cmake
                              INSTALL_DESTINATION ${TB_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/trainbusConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/trainbusConfig.cmake
              ${PROJECT_BINARY_DIR}/trainbusConfigVersion.cmake DESTINATION ${TB_CMAKE_DIR})

# ---- man pages, from --help ---------------------------------------------------
find_package(Python3 COMPONENTS Interpreter)
if(Python3_FOUND)
  set(TB_MAN_DIR ${PROJECT_BINARY_DIR}/man)
  file(MAKE_DIRECTORY ${TB_MAN_DIR})
  set(TB_SUBCOMMANDS train watch status runs history set-lr stop pause resume checkpoint submit
                     cancel)
  add_custom_command(
    OUTPUT ${TB_MAN_DIR}/trainbus.1
    COMMAND
      ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/man.py $<TARGET_FILE:trainbus> 1
      "watch and steer trainbus training runs, or train in this process" ${PROJECT_VERSION}
      ${TB_MAN_DIR}/trainbus.1 ${TB_SUBCOMMANDS}
    DEPENDS trainbus ${PROJECT_SOURCE_DIR}/scripts/man.py
    VERBATIM)
  add_custom_command(
    OUTPUT ${TB_MAN_DIR}/trainbusd.8
    COMMAND
      ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/man.py $<TARGET_FILE:trainbusd> 8
      "the trainbus daemon: runs training jobs and publishes their events to clients"
      ${PROJECT_VERSION} ${TB_MAN_DIR}/trainbusd.8
    DEPENDS trainbusd ${PROJECT_SOURCE_DIR}/scripts/man.py
    VERBATIM)
  add_custom_target(man ALL DEPENDS ${TB_MAN_DIR}/trainbus.1 ${TB_MAN_DIR}/trainbusd.8)
  install(FILES ${TB_MAN_DIR}/trainbus.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
  install(FILES ${TB_MAN_DIR}/trainbusd.8 DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
else()
  message(WARNING "python3 not found: no man pages (scripts/man.py writes them)")
endif()

# ---- the systemd unit ---------------------------------------------------------
set(TB_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING "where trainbusd.service is installed")
tb_configure_at_install(trainbusd.service.in ${TB_SYSTEMD_UNIT_DIR} trainbusd.service)

# ---- documentation ------------------------------------------------------------
install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR}
        FILES_MATCHING PATTERN "*.md")
