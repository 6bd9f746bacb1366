#!/bin/sh
# Entry point of every tool image: make the CANN toolkit usable when there is one, then run the command.
# The toolkit is the host's, mounted read-only by the docker runner (it must match the host's NPU driver),
# or the base image's own (BASE_IMAGE=an Ascend CANN image). Without one the image still exports, runs
# onnxruntime and evaluates; atc / ais_bench steps then say that CANN is missing.
for f in "${ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/set_env.sh}" \
         "${ASCEND_TOOLKIT_HOME:+$ASCEND_TOOLKIT_HOME/../set_env.sh}" \
         /usr/local/Ascend/ascend-toolkit/set_env.sh; do
  if [ -n "$f" ] && [ -f "$f" ]; then
    # shellcheck disable=SC1090
    . "$f"
    break
  fi
done
exec "$@"
