# Pantau — one entry point for setup, the demo and the tests. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PANTAU_CACHE ?= $(HOME)/.cache/pantau
include tools/versions.env
TRITON_DIR := $(PANTAU_CACHE)/pytriton-$(PYTRITON_VERSION)-ort-$(ONNXRUNTIME_VERSION)-pillow-$(PILLOW_VERSION)
APT_PACKAGES := gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 python3-gi python3-gst-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav util-linux libseccomp-dev pkg-config \
	iptables nftables busybox-static

# For `make images`: image builds without a daemon or registry, and the tests' unpacking of the
# archives.
IMAGES_APT_PACKAGES := buildah mmdebstrap umoci

.PHONY: help setup deps venv triton tools lint test test-smoke demo clean-stack images images-deps

help:
	@echo "make demo   - set up, then run the local stack until Ctrl-C"
	@echo "make test   - set up, lint, then run the test suites on the real local stack"
	@echo "make setup  - Debian packages, Python venv, Triton, Go-built stack binaries, images (cached)"
	@echo "make images - product, Triton and base images as OCI archives in \$$PANTAU_CACHE/images (cached)"

setup: deps venv triton tools images

# Debian packages for the RTSP test cameras (GStreamer RTSP server through the system python3-gi).
deps:
	@if dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -qv 'install ok installed' \
	    || [ $$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l) -ne $(words $(APT_PACKAGES)) ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	else echo "Debian packages: present"; fi

# The project's environment; reinstalled when pyproject.toml changes.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml devstack/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . -e ./devstack onnxruntime==$(ONNXRUNTIME_VERSION)
	touch $@

# Triton's own binary, from the nvidia-pytriton wheel, in a target directory of its own
# (the wheel pins numpy<2, which must not leak into the project's environment), with what the
# Python-backend models import: onnxruntime and Pillow.
triton: $(TRITON_DIR)/.installed
$(TRITON_DIR)/.installed:
	rm -rf $(TRITON_DIR)
	$(PYTHON) -m pip install -q --no-compile --target $(TRITON_DIR) nvidia-pytriton==$(PYTRITON_VERSION) \
	  onnxruntime==$(ONNXRUNTIME_VERSION) pillow==$(PILLOW_VERSION)
	test -x $(TRITON_DIR)/pytriton/tritonserver/bin/tritonserver
	touch $@

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, kwok,
# helm, Jaeger, and the node's runc (cgo + libseccomp-dev from deps), containerd, CNI plugins,
# crictl and CoreDNS: built from the Go module proxy into $(PANTAU_CACHE)/bin, skipped when built.
tools: deps
	tools/build.sh

# Container images built with buildah, no daemon or registry (tools/images.sh, docs/images.md):
# OCI archives and images.json under $(PANTAU_CACHE)/images, rebuilt only when their inputs change.
images: images-deps triton
	tools/images.sh

images-deps:
	@if dpkg-query -W -f='$${Status}\n' $(IMAGES_APT_PACKAGES) 2>/dev/null | grep -qv 'install ok installed' \
	    || [ $$(dpkg-query -W -f='$${Status}\n' $(IMAGES_APT_PACKAGES) 2>/dev/null | wc -l) -ne $(words $(IMAGES_APT_PACKAGES)) ]; then \
	  echo "installing Debian packages: $(IMAGES_APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(IMAGES_APT_PACKAGES); \
	else echo "Debian packages for images: present"; fi

lint: venv tools
	$(VENV)/bin/ruff check operator devstack tests
	$(VENV)/bin/ruff format --check operator devstack tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pantau dev lint-chart

test: setup lint
	$(VENV)/bin/pytest tests

test-smoke: setup
	$(VENV)/bin/pytest -m smoke tests

demo: setup
	$(VENV)/bin/pantau demo

clean-stack:
	-$(VENV)/bin/pantau dev down --purge
