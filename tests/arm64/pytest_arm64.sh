#!/usr/bin/env bash
# Run tova's Python tests on aarch64 under qemu-user, from an x86_64 Debian 12 host (no root, no
# binfmt_misc needed).
#
#   bash tests/arm64/pytest_arm64.sh [WORKDIR] [PYTEST ARGS...]
#   bash tests/arm64/pytest_arm64.sh build/arm64-py tests/test_quant.py -q
#
# WORKDIR (default build/arm64-py) holds, each step redone only when missing:
#   apt/      a private apt state for Debian's arm64 archive (the host's apt is left untouched)
#   sysroot/  Debian 12's arm64 python3.11 and the libraries it needs, unpacked with dpkg -x;
#             usr/lib/python3/dist-packages gets numpy, pytest, ... (aarch64 wheels from PyPI)
#   bin/python3  runs that interpreter under qemu-aarch64 (it is also sys.executable, so tests
#             that start Python subprocesses get the emulated one)
#   build/    the CMake build of tova._core (and the tova CLI) with the aarch64 cross compiler
#   pkg/tova  python/tova plus what `cmake --install` adds: the package as a wheel lays it out
# Host needs: qemu-user g++-aarch64-linux-gnu cmake (ninja-build) python3-pip, apt and network.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org), ARM_PIP_PACKAGES (what to install).
set -euo pipefail

die() { echo "pytest_arm64.sh: error: $*" >&2; exit 1; }
step() { echo "== pytest_arm64.sh: $* (${SECONDS}s)" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The first argument is the work dir unless it looks like a pytest argument (option or test file).
WORK=build/arm64-py
if [[ $# -gt 0 && $1 != -* && $1 != *.py && $1 != *::* ]]; then WORK=$1; shift; fi
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
cd "$REPO"

PYVER=3.11  # Debian 12's python3; the wheels and the extension suffix follow it
TRIPLE=aarch64-linux-gnu
SYSROOT=$WORK/sysroot
SITE=$SYSROOT/usr/lib/python3/dist-packages
PY=$WORK/bin/python3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
PIP_PACKAGES=${ARM_PIP_PACKAGES:-"numpy>=1.22 pytest>=7 gguf>=0.10 pyyaml tqdm tokenizers>=0.15 jinja2>=3.1.6 nanobind>=2.0"}

for tool in qemu-aarch64 $TRIPLE-gcc $TRIPLE-g++ cmake apt-get apt-cache dpkg python3; do
  command -v "$tool" >/dev/null || die "'$tool' not found; on Debian 12: apt-get install qemu-user" \
    "g++-aarch64-linux-gnu cmake ninja-build python3-pip"
done
python3 -m pip --version >/dev/null 2>&1 || die "host 'python3 -m pip' not found (apt-get install python3-pip)"

# --- 1. the arm64 interpreter: Debian's own packages, from a private apt state ------------------
if [[ ! -x $SYSROOT/usr/bin/python$PYVER || ! -f $WORK/sysroot.done ]]; then
  step "downloading Debian arm64 python$PYVER into $SYSROOT"
  KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f $KEYRING ]] || die "$KEYRING missing (apt-get install debian-archive-keyring)"
  A=$WORK/apt
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs"
  : > "$A/status"
  cat > "$A/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR/debian bookworm main
deb [signed-by=$KEYRING] $MIRROR/debian bookworm-updates main
deb [signed-by=$KEYRING] $MIRROR/debian-security bookworm-security main
EOF
  APT=(-o "Dir::State=$A" -o "Dir::State::Lists=$A/lists" -o "Dir::State::status=$A/status"
       -o "Dir::Cache=$A/cache" -o "Dir::Etc::SourceList=$A/sources.list"
       -o "Dir::Etc::SourceParts=/nonexistent" -o APT::Architecture=arm64
       -o APT::Architectures=arm64 -o Debug::NoLocking=1)
  apt-get "${APT[@]}" -qq update || die "apt-get update of the arm64 archive ($MIRROR) failed"
  # The interpreter's run-time closure, less what only package maintenance needs (perl, dpkg...).
  mapfile -t PKGS < <(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests \
      --no-conflicts --no-breaks --no-replaces --no-enhances \
      python$PYVER-minimal libpython$PYVER-stdlib libstdc++6 \
    | grep -E '^[a-z0-9]' | grep -vE '^(dpkg|tar|perl.*|libperl.*|install-info|mailcap|mime-support)$' \
    | sort -u)
  [[ ${#PKGS[@]} -gt 5 ]] || die "could not resolve the arm64 python$PYVER packages"
  # libpython3.11-dev alone (not its dependencies): the headers the extension compiles against.
  (cd "$A/debs" && apt-get "${APT[@]}" -qq download "${PKGS[@]}" libpython$PYVER-dev) \
    || die "apt-get download of the arm64 packages failed"
  rm -rf "$SYSROOT"
  for deb in "$A"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  touch "$WORK/sysroot.done"
  rm -f "$WORK/site.done"
fi

# The interpreter under qemu. PYTHONHOME pins sys.prefix to the sysroot (else qemu's -L remapping
# can fall through to the host's /usr/local/lib/python3.11); -0 makes sys.executable this script.
mkdir -p "$WORK/bin"
cat > "$PY" <<EOF
#!/bin/sh
PYTHONHOME="$SYSROOT/usr" PYTHONNOUSERSITE=1 exec qemu-aarch64 -L "$SYSROOT" -0 "\$0" "$SYSROOT/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$PY"
"$PY" -c 'import platform, sys; assert platform.machine() == "aarch64", platform.machine()' \
  || die "the arm64 interpreter does not run under qemu-aarch64 ($PY)"

# --- 2. Python packages: aarch64 wheels fetched and unpacked by the host's pip -----------------
if [[ ! -f $WORK/site.done || $(cat "$WORK/site.done") != "$PIP_PACKAGES" ]]; then
  step "installing aarch64 wheels into $SITE: $PIP_PACKAGES"
  rm -rf "$SITE" && mkdir -p "$SITE"
  # shellcheck disable=SC2086  # the package list is split on purpose
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$SITE" --only-binary=:all: --implementation cp --python-version $PYVER \
      --abi cp${PYVER/./} --abi abi3 --abi none --platform manylinux_2_28_aarch64 \
      --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 $PIP_PACKAGES \
    || die "pip could not install aarch64 wheels of: $PIP_PACKAGES"
  echo "$WORK/pkg" > "$SITE/tova-arm64.pth"  # tova itself comes from $WORK/pkg (step 3)
  echo "$PIP_PACKAGES" > "$WORK/site.done"
fi

# --- 3. tova._core cross-built, installed beside a copy of python/tova -------------------------
step "building tova._core for aarch64 in $WORK/build"
# pyconfig.h of Debian's python is a shim that includes <aarch64-linux-gnu/python3.11/pyconfig.h>,
# hence -isystem on the sysroot's include folder (it holds nothing but python's headers).
cat > "$WORK/aarch64.cmake.new" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER $TRIPLE-gcc)
set(CMAKE_CXX_COMPILER $TRIPLE-g++)
set(CMAKE_FIND_ROOT_PATH /usr/$TRIPLE "$SYSROOT")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CXX_FLAGS_INIT "-isystem $SYSROOT/usr/include")
EOF
# Replaced only when changed: a newer toolchain file would make CMake reconfigure every run.
cmp -s "$WORK/aarch64.cmake.new" "$WORK/aarch64.cmake" && rm "$WORK/aarch64.cmake.new" \
  || mv "$WORK/aarch64.cmake.new" "$WORK/aarch64.cmake"
if [[ ! -f $WORK/build/CMakeCache.txt ]]; then
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  # Python_EXECUTABLE is the emulated interpreter: FindPython, nanobind (`-m nanobind`, the
  # extension suffix .cpython-311-aarch64-linux-gnu.so) and the install-time stub generator ask it.
  cmake -S . -B "$WORK/build" "${GEN[@]}" -DCMAKE_TOOLCHAIN_FILE="$WORK/aarch64.cmake" \
      -DCMAKE_BUILD_TYPE=Release -DTOVA_CUDA=OFF -DTOVA_BUILD_TESTS=OFF -DTOVA_BUILD_PYTHON=ON \
      -DPython_EXECUTABLE="$PY" -DPython_INCLUDE_DIR="$SYSROOT/usr/include/python$PYVER" \
    || { rm -f "$WORK/build/CMakeCache.txt"; die "CMake configure for aarch64 failed"; }
fi
cmake --build "$WORK/build" --parallel || die "the aarch64 build of tova._core failed"

PKG=$WORK/pkg
rm -rf "$PKG/tova" && mkdir -p "$PKG"
# The pure-Python package as in the source tree, without host build leftovers (x86 .so, bin/).
tar -C python --exclude=__pycache__ --exclude='*.so' --exclude=tova/bin -cf - tova | tar -C "$PKG" -xf -
# _core, registry.json, include/, _core.pyi (stubgen runs under qemu) and bin/tova, as in a wheel.
cmake --install "$WORK/build" --prefix "$PKG" >/dev/null || die "cmake --install into $PKG failed"
# The aarch64 CLI can't be exec'd on the host: bin/tova becomes a script that runs it under qemu.
if [[ -f $PKG/tova/bin/tova ]]; then
  mv "$PKG/tova/bin/tova" "$PKG/tova/bin/tova.aarch64"
  printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" "%s" "$@"\n' "$SYSROOT" "$PKG/tova/bin/tova.aarch64" \
    > "$PKG/tova/bin/tova"
  chmod +x "$PKG/tova/bin/tova"
fi
"$PY" -c 'from tova import _core; print("tova._core on aarch64: kernel_isa", _core.kernel_isa(),
                                         "cpu_tiers", _core.cpu_tiers())' \
  || die "import of tova._core under qemu failed"

# --- 4. pytest under qemu -----------------------------------------------------------------------
step "running pytest under qemu-aarch64: $*"
SETUP_S=$SECONDS
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
echo "== pytest_arm64.sh: pytest exited $rc after $((SECONDS - SETUP_S))s (setup and build took ${SETUP_S}s)" >&2
exit $rc
