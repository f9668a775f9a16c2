# CMake toolchain: cross-compile the native core for 64-bit Windows with MinGW-w64 (Debian:
# g++-mingw-w64-x86-64-posix) and run its tests under Wine (Debian: wine64, wine).
#
#   cmake -S . -B build/mingw -DCMAKE_TOOLCHAIN_FILE=ci/mingw-w64-x86_64.cmake \
#         -DAGENT_SWARM_BUILD_MODULE=OFF -DAGENT_SWARM_BUILD_TESTS=ON
#   cmake --build build/mingw && ctest --test-dir build/mingw
#
# Executables are linked statically (-static: no libstdc++/winpthread DLLs to find at run
# time) with -municode (wmain: arguments arrive as UTF-16). Set WINEPREFIX to a prefix that
# exists (its first creation takes seconds) and WINEDEBUG=-all for quiet runs.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(_mingw x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${_mingw}-gcc-posix)
set(CMAKE_CXX_COMPILER ${_mingw}-g++-posix)
set(CMAKE_RC_COMPILER ${_mingw}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${_mingw})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_EXE_LINKER_FLAGS_INIT "-municode -static")
# CMake's compiler check links a main(), which -municode (entry point wmain) would refuse:
# check by compiling a static library instead.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# Debian's wine64 package installs the loader as /usr/lib/wine/wine64 (the `wine` package
# adds the /usr/bin/wine wrapper script).
if(NOT CMAKE_CROSSCOMPILING_EMULATOR)
  find_program(AGENT_SWARM_WINE NAMES wine64 wine PATHS /usr/lib/wine)
  if(AGENT_SWARM_WINE)
    set(CMAKE_CROSSCOMPILING_EMULATOR ${AGENT_SWARM_WINE})
  endif()
endif()
