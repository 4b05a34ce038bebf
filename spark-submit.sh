#!/usr/bin/env bash
# Run a pmf-spark job with the spark-submit of the installed pyspark.
#
#   ./spark-submit.sh [spark-submit options] jobs/train_pmf.py [job options]
#
# - Python: $PYSPARK_PYTHON, else this checkout's .venv, else the active virtualenv,
#   else python3. Driver and Python workers use the same interpreter.
# - Spark: $SPARK_HOME if it has bin/spark-submit, else the one inside pyspark.
# - Properties: conf/local.conf, unless you pass --properties-file.
# - Local runs bind to 127.0.0.1 (SPARK_LOCAL_IP) unless it is set already.
# - BLAS is capped at one thread in the driver and the Python workers.
# Every argument is passed through to spark-submit unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -n "${PYSPARK_PYTHON:-}" ]]; then
  PY="$PYSPARK_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  PY="$(command -v python3 || true)"
fi
if [[ -z "$PY" ]] || ! "$PY" -c "import pyspark, pmf_spark" 2>/dev/null; then
  echo "spark-submit.sh: no Python with pyspark and pmf_spark installed (tried '${PY:-python3}')." >&2
  echo "  install it: python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2
  exit 2
fi

if [[ -z "${SPARK_HOME:-}" || ! -x "${SPARK_HOME}/bin/spark-submit" ]]; then
  SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
fi
export SPARK_HOME
export PYSPARK_PYTHON="$PY"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# Which master, and did the caller bring their own properties / driver java options?
master=""; own_props=0; own_jopts=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --master) master="${args[$((i + 1))]:-}" ;;
    --master=*) master="${args[$i]#--master=}" ;;
    --properties-file|--properties-file=*) own_props=1 ;;
    --driver-java-options|--driver-java-options=*) own_jopts=1 ;;
    *.py) break ;;  # the application: the rest are its own arguments
  esac
done

extra=()
if [[ $own_props -eq 0 ]]; then
  extra+=(--properties-file "$ROOT/conf/local.conf")
fi
if [[ $own_jopts -eq 0 ]]; then
  extra+=(--driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties")
fi
if [[ -z "$master" || "$master" == local* ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

exec "$SPARK_HOME/bin/spark-submit" "${extra[@]}" "$@"
