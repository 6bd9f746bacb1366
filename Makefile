# The front door. `make help` lists everything.
#   make test                         # build the environments (cached) and run the tests
#   make demo                         # the whole pipeline with random weights on a generated mini COCO set
#   make fcos-om CHIP=310P3           # ATC command for FCOS (runs atc where CANN is installed)
SHELL := /bin/bash
.DEFAULT_GOAL := help

MODELS       := $(patsubst tools/%/model.toml,%,$(wildcard tools/*/model.toml))
# tools whose model.toml says status = "ready" (the data file is the one source of that fact)
READY_MODELS := $(patsubst tools/%/model.toml,%,$(shell grep -l '^status *= *"ready"' tools/*/model.toml))
STEPS        := env image image-test onnx om data infer eval stream merge perf all

HOSTPY  ?= python3
# the chip `npu-smi info` reports on this host, else 310P3 (the seeds' chip); CHIP= overrides
ifeq ($(origin CHIP),undefined)
  CHIP := $(or $(shell $(HOSTPY) -m common.cann chip 2>/dev/null),310P3)
endif
BATCH   ?= 1
DEVICE  ?= 0
BACKEND ?= onnxruntime
TARGET  ?= ascend
DATA    ?=
WEIGHTS ?=
TUNE    ?=
OUT     ?= out
FORCE   ?=
DYNAMIC_BATCH ?=
# float: the tool's normalised tensors (the recipes); uint8: the canvas before normalisation, normalised on the
# NPU by AIPP (ATC --insert_op_conf) or by a prologue in the ONNX for onnxruntime (common/aipp.py)
INPUT   ?= float
DEMO_MODEL ?= efficientdet
# docker when an engine answers, else a per-tool virtualenv; RUNNER=venv|docker overrides
RUNNER  ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo venv)

force_flag   = $(if $(FORCE),--force)
# SHARD=I/N (or auto/N in a Kubernetes Indexed Job): M-data, M-infer and M-stream run only that shard of the dataset
# into $(OUT)/M/shards/<I> (auto: I is $JOB_COMPLETION_INDEX); M-merge COUNT=N (or SHARD=.../N) merges and evaluates
shard_flag   = $(if $(SHARD),--shard $(SHARD))
shard_index  = $(if $(filter auto,$(firstword $(subst /, ,$(SHARD)))),$${JOB_COMPLETION_INDEX:-auto},$(firstword $(subst /, ,$(SHARD))))
shard_count  = $(or $(COUNT),$(if $(SHARD),$(lastword $(subst /, ,$(SHARD)))))
# where step $(2) of tool $(1) writes: its shard's folder under SHARD=, else $(OUT)/$(1)/$(2)
step_dir     = $(if $(SHARD),$(OUT)/$(1)/shards$(u8)/$(shard_index)$(if $(filter data,$(2)),/data),$(OUT)/$(1)/$(2)$(u8))
# CHIP in its one spelling (310p3, Ascend310P3 -> Ascend310P3), asked once and only where a .om is named
SOC          = $(eval SOC := $$(shell $$(HOSTPY) -m common.cann soc '$$(CHIP)' 2>/dev/null))$(SOC)
# the .om ATC writes for tool $(1) at batch $(2): the export target is in the name (both targets compile)
# INPUT=uint8 files carry _uint8 (its data, results and models live beside the float ones)
u8           = $(if $(filter uint8,$(INPUT)),_uint8)
om_file      = $(OUT)/$(1)/om/$(1)_$(TARGET)_bs$(2)$(u8)_$(SOC).om
# the model file a backend runs for tool $(1) at batch $(2): the .om under ais_bench, else the .onnx
model_file   = $(if $(filter ais_bench,$(BACKEND)),$(call om_file,$(1),$(2)),$(OUT)/$(1)/onnx/$(1)_$(TARGET)_bs$(2)$(u8).onnx)
# first recipe line of a step: an empty CHIP/BATCH/TARGET/BACKEND is refused (the tool would see a missing
# argument), and so is an unknown CHIP when the step names a .om ($(1) not empty)
check_vars   = @for kv in CHIP='$(strip $(CHIP))' BATCH='$(strip $(BATCH))' TARGET='$(strip $(TARGET))' \
  BACKEND='$(strip $(BACKEND))' INPUT='$(strip $(INPUT))'; do [ -n "$${kv\#*=}" ] || { echo "error: $${kv%%=*} is empty: give it a value or \
  leave it out for its default (make help lists them)" >&2; exit 2; }; done $(if $(1),&& $(HOSTPY) -m common.cann soc '$(CHIP)' >/dev/null)
# M-all: run step $(2) unless its finished output $(1) is there (a rerun continues where it stopped)
if_missing   = if [ -z "$(FORCE)" ] && [ -e $(1) ]; then echo "$(2): keeping $(1) (FORCE=1 redoes it)"; \
  else $(MAKE) --no-print-directory $(2); fi
weights_flag = $(if $(WEIGHTS),--weights $(WEIGHTS))
# Images (common/containers.py): docker when a daemon answers, else buildah. BASE_IMAGE unset: the local base
# from `make base-image` when there is one, else the Dockerfile's public python:3.9-slim-bullseye; BASE_IMAGE=
# (empty): the public one. CA_BUNDLE (default: the system's; empty: none) and PIP_CONF reach pip as build secrets.
NPU     ?= auto
image_flags  = $(if $(filter undefined,$(origin BASE_IMAGE)),,--base-image '$(BASE_IMAGE)') \
  $(if $(filter undefined,$(origin CA_BUNDLE)),,--ca-bundle '$(CA_BUNDLE)') $(if $(PIP_CONF),--pip-conf '$(PIP_CONF)')
# the light base environment (no tool env, no image): steps that read only data files and results
base_py = $(HOSTPY) -m common.envs ensure base >&2 && $$($(HOSTPY) -m common.envs python base) -m
ifeq ($(RUNNER),docker)
  # the tool's image with the host uid:gid, NPU devices (DEVICE=0,1: each), driver + toolkit mounts, OUT/DATA/WEIGHTS
  # mounted at their own paths; the docker run command is printed first (README "Environments and containers")
  run_py = $(HOSTPY) -m common.containers run $(1) --device '$(DEVICE)' --out '$(OUT)' --data '$(DATA)' \
    --weights '$(WEIGHTS)' --npu $(NPU) -- python -m
  # the om step in the tool's image (CANN is mounted there)
  om_deps = $(1)-env
  om_py = $(call run_py,$(1))
else ifeq ($(RUNNER),venv)
  run_py = $$($(HOSTPY) -m common.envs python $(1)) -m
  # the om step needs only model.toml, the ONNX and atc: the light base environment, never the tool's
  om_deps =
  om_py = $(base_py)
else
  $(error unknown RUNNER '$(RUNNER)' (valid: venv, docker))
endif

.PHONY: help test test-slow lint demo doctor clean report fleet-report base-image images test-images $(foreach m,$(MODELS),$(foreach s,$(STEPS),$(m)-$(s)))

# Kubernetes fleet (common/fleet.py, README "Kubernetes fleet"): Jobs per MODELS x CHIP x BATCH under OUT/fleet;
# REGISTRY is where `make images PUSH=1` pushed the images; the *_PVC are PersistentVolumeClaim names
SHARDS      ?=
PARALLELISM ?=
RETRIES     ?= 3
REGISTRY    ?=
DATA_PVC    ?=
DATA_DIR    ?=
RESULTS_PVC ?=
WEIGHTS_PVC ?=
NAMESPACE   ?= default
TOOLKIT     ?= /usr/local/Ascend/ascend-toolkit
PUSH        ?=
# the fleet runs the .om on the chips unless BACKEND is given (the default BACKEND above is onnxruntime)
fleet_backend = $(if $(filter command line environment,$(origin BACKEND)),$(BACKEND),ais_bench)
.PHONY: fleet

help: ## list the targets and variables
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@echo "Project targets:"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-22s %s\n", $$1, $$2}'
	@echo
	@echo "Model targets (M = $(MODELS)):"
	@for m in $(MODELS); do printf "  %s\n" "$$(for s in $(STEPS); do printf '%s-%s ' $$m $$s; done)"; done
	@echo "  env: build the tool's venv  image: its image  image-test: its tests in the image  onnx: export  om: ATC  data: preprocess"
	@echo "  infer: run BACKEND  eval: COCO/VOC metrics + report  stream: data+infer+eval in one pass, no files"
	@echo "  merge: check the SHARD= runs' shards 0..COUNT-1 are complete, merge them and evaluate once"
	@echo "  perf: throughput  all: onnx (om) data infer eval,"
	@echo "  skipping steps whose outputs exist (om only with BACKEND=ais_bench)"
	@echo "  Ready: $(READY_MODELS); the others have their data file only (planned)."
	@echo
	@echo "Variables: CHIP=$(CHIP) BATCH=$(BATCH) DEVICE=$(DEVICE) BACKEND=$(BACKEND) (ais_bench|onnxruntime)"
	@echo "  TARGET=$(TARGET) (ascend|onnx) DATA=<coco root> WEIGHTS=<checkpoint> OUT=$(OUT) TUNE=(subgraph|op)"
	@echo "  FORCE=1 (overwrite outputs) DYNAMIC_BATCH=1 (M-onnx, targets that allow it) RUNNER=$(RUNNER) (venv|docker)"
	@echo "  NO_VERIFY=1 (M-onnx: WEIGHTS is your own checkpoint, no published checksum) SKIP_BAD=1 (M-data: leave out"
	@echo "  unreadable images, recorded; mAP marked partial) WORKERS=N (M-data: images at once; default one per core)"
	@echo "  INPUT=$(INPUT) (float|uint8: uint8 canvases normalised on the NPU by AIPP / in the ONNX; tools that declare it)"
	@echo "  Fleet (make fleet, README \"Kubernetes fleet\"): MODELS CHIP BATCH SHARDS PARALLELISM RETRIES REGISTRY DATA_PVC"
	@echo "  DATA_DIR RESULTS_PVC WEIGHTS_PVC NAMESPACE TOOLKIT NO_VERIFY=1; make images PUSH=1 REGISTRY=<host/path>"
	@echo "  SHARD=I/N or auto/N (M-data M-infer M-stream: only that shard, into OUT/M/shards/I; auto: I from"
	@echo "  \$$JOB_COMPLETION_INDEX) COUNT=N (M-merge: the number of shards; default: SHARD's N)"

test: ## build the environments once (cached) and run every test suite
	$(HOSTPY) tests/run.py

test-slow: ## also run the slow tier (full-size exports)
	$(HOSTPY) tests/run.py --slow

lint: ## ruff over the project
	$(HOSTPY) -m ruff check .

doctor: ## what this host can run (Python, venvs, Docker, CANN, NPUs) and how to fix each gap
	$(HOSTPY) -m common.doctor

demo: ## whole pipeline for DEMO_MODEL (random weights + a generated mini set unless WEIGHTS= and DATA=)
	$(MAKE) $(DEMO_MODEL)-env
	$(call run_py,$(DEMO_MODEL)) tools.$(DEMO_MODEL) demo --out $(OUT)/demo/$(DEMO_MODEL) \
	  $(weights_flag) $(if $(DATA),--data $(DATA)) --chip $(CHIP) --force

clean: ## remove $(OUT), only when everything in it was made by the tools (never ~, /, the repo)
	$(HOSTPY) -m common.fsutil clean "$(OUT)"

report: ## results page OUT/report/index.{md,html} + throughput.png from the results in OUT (replaced on each run)
	$(base_py) common.resultspage --out '$(OUT)' $(if $(DEST),--dest '$(DEST)')

fleet-report: ## results page of a fleet: one row per model x chip x batch from RESULTS/*/job.json + report.json
	@test -n "$(RESULTS)" || { echo "error: RESULTS=<the fleet's results folder> is required for fleet-report" >&2; exit 2; }
	$(base_py) common.resultspage fleet --results '$(RESULTS)' $(if $(DEST),--dest '$(DEST)')

base-image: ## local Python 3.9 base image (Debian bullseye via mmdebstrap) for hosts no registry serves; FORCE=1 redoes it
	$(HOSTPY) -m common.containers base-image $(if $(FORCE),--force)

images: ## build every ready tool's image; one line each: name:tag, size, build time or "cached"; PUSH=1 REGISTRY=... pushes them
	$(HOSTPY) -m common.containers images $(image_flags) $(if $(PUSH),--push '$(REGISTRY)')

fleet: ## Kubernetes Jobs per MODELS x CHIP x BATCH (SHARDS, REGISTRY, DATA_PVC, RESULTS_PVC required) under OUT/fleet
	$(base_py) common.fleet render --models '$(MODELS)' --chip '$(CHIP)' --batch '$(BATCH)' --shards '$(SHARDS)' \
	  --parallelism '$(PARALLELISM)' --retries '$(RETRIES)' --registry '$(REGISTRY)' --data-pvc '$(DATA_PVC)' \
	  --data-dir '$(DATA_DIR)' --results-pvc '$(RESULTS_PVC)' --weights-pvc '$(WEIGHTS_PVC)' \
	  --namespace '$(NAMESPACE)' --backend '$(fleet_backend)' --toolkit '$(TOOLKIT)' --out '$(OUT)/fleet' \
	  $(if $(NO_VERIFY),--no-verify) $(force_flag)

test-images: ## build every ready tool's image and run its test suite inside it
	$(HOSTPY) -m common.containers images --test $(image_flags)

define ready_model
$(1)-env:
ifeq ($(RUNNER),docker)
	$$(MAKE) $(1)-image
else
	$(HOSTPY) -m common.envs ensure $(1)
endif
$(1)-image:
	$(HOSTPY) -m common.containers build $(1) $$(image_flags)
$(1)-image-test: $(1)-image
	$(HOSTPY) -m common.containers test $(1)
$(1)-onnx: $(1)-env
	$$(call check_vars)
	$$(call run_py,$(1)) tools.$(1) export --out $(OUT)/$(1)/onnx --batch $(BATCH) --target $(TARGET) \
	  $(weights_flag) $(force_flag) $(if $(DYNAMIC_BATCH),--dynamic-batch) $(if $(NO_VERIFY),--no-verify)
	$(if $(u8),$$(call om_py,$(1)) common.aipp onnx --model $(1) \
	  --onnx $(OUT)/$(1)/onnx/$(1)_$(TARGET)_bs$(BATCH).onnx $(force_flag))
$(1)-om: $$(call om_deps,$(1))
	$$(call check_vars,om)
	$$(call om_py,$(1)) common.atc --model $(1) --onnx $(OUT)/$(1)/onnx/$(1)_$(TARGET)_bs$(BATCH).onnx \
	  --target $(TARGET) --out $(OUT)/$(1)/om --chip $(CHIP) --batch $(BATCH) --device $(DEVICE) \
	  $(if $(TUNE),--tune $(TUNE)) --input $(INPUT) $(force_flag)
$(1)-data: $(1)-env
	@test -n "$(DATA)" || { echo "error: DATA=<dataset root> is required for $(1)-data" >&2; exit 2; }
	$$(call run_py,$(1)) tools.$(1) data --data $(DATA) --out $$(call step_dir,$(1),data) $(force_flag) $(if $(SKIP_BAD),--skip-bad) \
	  $(if $(WORKERS),--workers $(WORKERS)) --input $(INPUT) $(shard_flag)
$(1)-infer: $(1)-env
	$$(call check_vars,$(filter ais_bench,$(BACKEND)))
	$$(call run_py,$(1)) tools.$(1) infer --model $$(call model_file,$(1),$(BATCH)) \
	  --prep $$(call step_dir,$(1),data) --out $$(call step_dir,$(1),infer) --backend $(BACKEND) --batch $(BATCH) \
	  --device $(DEVICE) $(force_flag) $(shard_flag)
$(1)-eval: $(1)-env
	$$(call check_vars,$(filter ais_bench,$(BACKEND)))
	$$(call run_py,$(1)) tools.$(1) eval --prep $(OUT)/$(1)/data$(u8) --results $(OUT)/$(1)/infer$(u8)/$(1)_$(BACKEND)_bs$(BATCH) \
	  --model $$(call model_file,$(1),$(BATCH)) \
	  --out $(OUT)/$(1)/eval$(u8) --target $(TARGET) --backend $(BACKEND) --batch $(BATCH) $(force_flag)
$(1)-stream: $(1)-env
	$$(call check_vars,$(filter ais_bench,$(BACKEND)))
	@test -n "$(DATA)" || { echo "error: DATA=<dataset root> is required for $(1)-stream" >&2; exit 2; }
	$$(call run_py,$(1)) tools.$(1) stream --model $$(call model_file,$(1),$(BATCH)) --data $(DATA) \
	  --out $$(call step_dir,$(1),stream) --target $(TARGET) --backend $(BACKEND) --batch $(BATCH) --device $(DEVICE) \
	  --input $(INPUT) $(if $(WORKERS),--workers $(WORKERS)) $(if $(SKIP_BAD),--skip-bad) $(force_flag) $(shard_flag)
$(1)-merge: $(1)-env
	@test -n "$(DATA)" || { echo "error: DATA=<dataset root> is required for $(1)-merge" >&2; exit 2; }
	@test -n "$$(call shard_count)" || { echo "error: COUNT=<N> (the number of shards) is required for $(1)-merge" >&2; \
	  exit 2; }
	$$(call run_py,$(1)) tools.$(1) merge --shards $(OUT)/$(1)/shards$(u8) --count $$(call shard_count) --data $(DATA) \
	  --out $(OUT)/$(1)/merge$(u8) $(force_flag)
$(1)-perf: $(1)-env
	$$(call check_vars,$(filter ais_bench,$(BACKEND)))
	for b in $(BATCH); do \
	  $$(call run_py,$(1)) tools.$(1) perf --model $$(call model_file,$(1),$$$${b}) \
	    --out $(OUT)/$(1)/perf --backend $(BACKEND) --batch $$$${b} --device $(DEVICE) $(force_flag) || exit $$$$?; \
	done
$(1)-all: $(1)-env
	$$(call check_vars,$(filter ais_bench,$(BACKEND)))
	@$$(call if_missing,$(OUT)/$(1)/onnx/$(1)_$(TARGET)_bs$(BATCH)$(u8).onnx,$(1)-onnx)
	$$(if $$(filter ais_bench,$(BACKEND)),@$$(call if_missing,$$(call om_file,$(1),$(BATCH)),$(1)-om))
	@$$(call if_missing,$(OUT)/$(1)/data$(u8)/manifest.json,$(1)-data)
	@$$(call if_missing,$(OUT)/$(1)/infer$(u8)/$(1)_$(BACKEND)_bs$(BATCH),$(1)-infer)
	@$$(call if_missing,$(OUT)/$(1)/eval$(u8)/report.json,$(1)-eval)
endef

define planned_model
$(foreach s,$(STEPS),$(1)-$(s)):
	@echo "error: the $(1) tool is planned: only tools/$(1)/model.toml exists so far (see README, Roadmap)" >&2; exit 2
endef

$(foreach m,$(READY_MODELS),$(eval $(call ready_model,$(m))))
$(foreach m,$(filter-out $(READY_MODELS),$(MODELS)),$(eval $(call planned_model,$(m))))
