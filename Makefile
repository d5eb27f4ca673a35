# One command does what CI does: `make test` (which .ci/run calls).
#
#   make deps       install the system packages the build needs (Debian/Ubuntu, via apt-get)
#   make pydeps     install the Python packages the grpcio end-to-end tests use (pinned, from
#                   PyPI with pip, into the machine's python3) unless python3 imports them already
#   make test       rustfmt check, clippy with warnings denied, every test of the workspace
#                   (among them server/tests/python_e2e.rs, which drives terad with Python's
#                   grpcio through tests/python/e2e.py), loom
#   make run        build and start terad, the gRPC metadata server, on its embedded defaults:
#                   gRPC on 127.0.0.1:7420, metrics and /healthz on 127.0.0.1:7421, data under
#                   ./terad-data (the first start writes the admin's password to
#                   ./terad-data/admin-password); stop it with ctrl-c or SIGTERM
#   make tierbench  the tierbench macro benchmark with a small default configuration
#   make peers      build tierbench with the peer engines (LMDB, RocksDB, redb, fjall; cargo
#                   feature `peers`), installing libclang-dev for RocksDB's bindgen when
#                   missing, and run the peers' own tests; the whole build took 14 to 30
#                   minutes on 2 cores here (RocksDB's C++ most of it), which is why
#                   `make test` leaves it out
#   make loom       the engine's loom model tests (own target dir: the cfg changes every crate)
#
# Extra arguments: `make test TEST_FLAGS='-- --nocapture'`, `make run TERAD_ARGS='--listen
# 127.0.0.1:9000'`, `make tierbench RUN_ARGS='--records 1000000'`.

SHELL := /bin/bash
CARGO ?= cargo

# System packages the build needs: hwloc for tera-numa (hwlocality links the system library,
# found through pkg-config), libudev and pkg-config itself.
DEB_PACKAGES := libhwloc-dev libudev-dev pkg-config

# Python packages of the grpcio end-to-end tests (tests/python/e2e.py), pinned together:
# grpcio-tools 1.85 generates code for protobuf 7 (>= 7.35.1), which the other three need too.
PY_PACKAGES := grpcio==1.85.1 grpcio-tools==1.85.1 grpcio-reflection==1.85.1 \
	grpcio-health-checking==1.85.1 protobuf==7.36.2
PY_IMPORTS := grpc, grpc_tools, grpc_reflection, grpc_health, google.protobuf

TEST_FLAGS ?=
TERAD_ARGS ?=
RUN_ARGS ?= --records 200000 --value-bytes 256 --seconds 3 --dram-fractions 1,0.25

.PHONY: all deps pydeps test run tierbench peers loom

all: test

# A package counts as present if dpkg has it installed, or (on a distribution without dpkg)
# if what the build uses from it is there: `pkg-config` on the PATH, or its .pc file.
deps:
	@missing=""; \
	for pkg in $(DEB_PACKAGES); do \
	  if dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'install ok installed'; then continue; fi; \
	  case "$$pkg" in \
	    pkg-config) command -v pkg-config >/dev/null 2>&1 && continue ;; \
	    libhwloc-dev) pkg-config --exists hwloc 2>/dev/null && continue ;; \
	    libudev-dev) pkg-config --exists libudev 2>/dev/null && continue ;; \
	  esac; \
	  missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: $(DEB_PACKAGES) are installed"; exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "deps: missing system packages:$$missing" >&2; \
	  echo "deps: apt-get is not available; install them (or your distribution's hwloc and libudev development packages and pkg-config) and run make again" >&2; \
	  exit 1; \
	fi; \
	sudo=""; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  if ! command -v sudo >/dev/null 2>&1; then \
	    echo "deps: missing system packages:$$missing; not root and no sudo: run 'apt-get install -y$$missing' as root" >&2; \
	    exit 1; \
	  fi; \
	  sudo="sudo"; \
	fi; \
	echo "deps: installing$$missing"; \
	echo "+ $$sudo apt-get update"; \
	$$sudo apt-get update; \
	echo "+ $$sudo apt-get install -y$$missing"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing

# Installed into the machine's python3 (CI runs as root). A Debian python3 marks itself
# externally managed (PEP 668), and pip then refuses to install outside a venv unless told
# --break-system-packages; a python3 without the marker (pyenv, a venv) needs no flag.
pydeps:
	@if python3 -c 'import $(PY_IMPORTS)' 2>/dev/null; then \
	  echo "pydeps: python3 imports $(PY_IMPORTS)"; \
	  exit 0; \
	fi; \
	if ! python3 -m pip --version >/dev/null 2>&1; then \
	  sudo=""; \
	  if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi; \
	  if ! command -v apt-get >/dev/null 2>&1 || { [ "$$(id -u)" -ne 0 ] && [ -z "$$sudo" ]; }; then \
	    echo "pydeps: python3 or its pip is missing: install them (Debian: apt-get install python3 python3-pip) and run make again" >&2; \
	    exit 1; \
	  fi; \
	  echo "+ $$sudo apt-get update && $$sudo apt-get install -y python3 python3-pip"; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-pip || exit 1; \
	fi; \
	flags=""; \
	if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then \
	  flags="--break-system-packages"; \
	fi; \
	echo "+ python3 -m pip install --quiet $$flags $(PY_PACKAGES)"; \
	python3 -m pip install --quiet $$flags $(PY_PACKAGES) && \
	python3 -c 'import $(PY_IMPORTS)'

test: deps pydeps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace $(TEST_FLAGS)
	TERA_BENCH_QUICK=1 $(CARGO) test -p tera-benches --benches
	python3 benches/scripts/test_scripts.py
	$(MAKE) --no-print-directory loom

run: deps
	$(CARGO) run --release -p tera-server --bin terad -- $(TERAD_ARGS)

tierbench: deps
	$(CARGO) run --release -p tera-benches --bin tierbench -- $(RUN_ARGS)

peers: deps
	@# libclang-cpp*.so is not what bindgen loads: look for libclang.so or libclang-<version>.so.
	@if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ls /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1; then \
	  sudo=""; if [ "$$(id -u)" -ne 0 ]; then sudo="sudo"; fi; \
	  echo "+ $$sudo apt-get install -y libclang-dev (bindgen for librocksdb-sys)"; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y libclang-dev; \
	fi
	$(CARGO) build --release -p tera-benches --features peers --bin tierbench
	$(CARGO) clippy --release -p tera-benches --features peers --all-targets -- -D warnings
	$(CARGO) test --release -p tera-benches --features peers --lib

# The engine needs tera-numa, hence hwloc, hence deps.
loom: deps
	RUSTFLAGS="--cfg tera_loom" CARGO_TARGET_DIR=target/loom $(CARGO) test -p tera-engine --release --lib loom
