#!/usr/bin/env bash
# Run a pmf-spark job with the spark-submit of the installed pyspark.
#
#   ./spark-submit.sh [spark-submit options] jobs/train_pmf.py [job options]
#
# - Python: $PYSPARK_PYTHON, else this checkout's .venv, else the active virtualenv,
#   else python3, for the driver and the Python workers; $PYSPARK_DRIVER_PYTHON
#   overrides the driver's (on a cluster, PYSPARK_PYTHON names the executors' Python,
#   which need not exist on this machine).
# - Spark: $SPARK_HOME if it has bin/spark-submit, else the one inside pyspark.
# - Properties: conf/local.conf for local masters, conf/cluster.conf otherwise,
#   unless you pass --properties-file.
# - Executors get pmf_spark as a zip built from this checkout into build/ and passed
#   with --py-files (set PMF_SPARK_SHIP=0 to skip that, e.g. when it is installed on
#   every node already).
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
DRIVER_PY="${PYSPARK_DRIVER_PYTHON:-$PY}"
if [[ -z "$DRIVER_PY" ]] || ! (cd / && "$DRIVER_PY" -c "import pyspark, pmf_spark" 2>/dev/null); then
  echo "spark-submit.sh: no Python with pyspark and pmf_spark installed (tried '${DRIVER_PY:-python3}')." >&2
  echo "  install it: python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2
  exit 2
fi

if [[ -z "${SPARK_HOME:-}" || ! -x "${SPARK_HOME}/bin/spark-submit" ]]; then
  SPARK_HOME="$("$DRIVER_PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
fi
export SPARK_HOME
export PYSPARK_PYTHON="$PY"
export PYSPARK_DRIVER_PYTHON="$DRIVER_PY"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# Which master, and did the caller bring their own properties / driver java options /
# py-files?
master=""; own_props=0; own_jopts=0; own_pyfiles=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --master) master="${args[$((i + 1))]:-}" ;;
    --master=*) master="${args[$i]#--master=}" ;;
    --properties-file|--properties-file=*) own_props=1 ;;
    --driver-java-options|--driver-java-options=*) own_jopts=1 ;;
    --py-files) own_pyfiles="${args[$((i + 1))]:-}" ;;
    --py-files=*) own_pyfiles="${args[$i]#--py-files=}" ;;
    *.py) break ;;  # the application: the rest are its own arguments
  esac
done

local_master=0
if [[ -z "$master" || "$master" == local* ]]; then
  local_master=1
fi

extra=()
if [[ $own_props -eq 0 ]]; then
  if [[ $local_master -eq 1 ]]; then
    extra+=(--properties-file "$ROOT/conf/local.conf")
  else
    extra+=(--properties-file "$ROOT/conf/cluster.conf")
  fi
fi
if [[ $own_jopts -eq 0 ]]; then
  extra+=(--driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties")
fi
if [[ $local_master -eq 1 ]]; then
  export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
fi

if [[ "${PMF_SPARK_SHIP:-1}" != "0" ]]; then
  # a fresh zip of the package for the executors (never committed: build/ is ignored)
  zip_path="$("$DRIVER_PY" - "$ROOT" <<'PYZIP'
import hashlib, os, sys, zipfile
root = sys.argv[1]
files = []
for base, dirs, names in os.walk(os.path.join(root, "pmf_spark")):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    files += sorted(os.path.join(base, n) for n in names if n.endswith(".py"))
digest = hashlib.sha256()
for f in files:
    digest.update(os.path.relpath(f, root).encode())
    with open(f, "rb") as fh:
        digest.update(fh.read())
out_dir = os.path.join(root, "build")
os.makedirs(out_dir, exist_ok=True)
out = os.path.join(out_dir, f"pmf_spark-{digest.hexdigest()[:12]}.zip")
if not os.path.exists(out):
    tmp = out + f".{os.getpid()}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, os.path.relpath(f, root))
    os.replace(tmp, out)
print(out)
PYZIP
)"
  if [[ -n "$own_pyfiles" ]]; then
    # merge with the caller's --py-files: rewrite that argument
    for ((i = 0; i < ${#args[@]}; i++)); do
      case "${args[$i]}" in
        --py-files) args[$((i + 1))]="${args[$((i + 1))]},$zip_path"; break ;;
        --py-files=*) args[$i]="${args[$i]},$zip_path"; break ;;
        *.py) break ;;
      esac
    done
    set -- "${args[@]}"
  else
    extra+=(--py-files "$zip_path")
  fi
fi

app=""
for a in "$@"; do
  if [[ "$a" == *.py ]]; then app="$a"; break; fi
done
# the JVM starts before any of the job's Python runs: say so, the first lines take a while
echo "spark-submit.sh: starting Spark for ${app:-the application} (${master:-local[*]}); the job's own progress lines follow once the JVM is up" >&2
exec "$SPARK_HOME/bin/spark-submit" "${extra[@]}" "$@"
