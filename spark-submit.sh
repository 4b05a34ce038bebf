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
# - The job's own arguments are checked in plain Python first (its check_args: a bad
#   flag, a bad value, --help, --print-config), so a typo costs a second, not a JVM start.
# - Ctrl-C reaches the Python driver only (the JVM and the Python workers ignore it), so
#   the job can cancel its Spark jobs, leave the output as it was, print one line and
#   exit 130; SIGTERM to this script is passed on to the driver the same way.
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
# py-files? Where is the application (the rest are its own arguments)?
master=""; own_props=0; own_jopts=0; own_pyfiles=""; app_index=-1; other_fs=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --master) master="${args[$((i + 1))]:-}"; i=$((i + 1)) ;;
    --master=*) master="${args[$i]#--master=}" ;;
    --properties-file) own_props=1; i=$((i + 1)) ;;
    --properties-file=*) own_props=1 ;;
    --driver-java-options) own_jopts=1; i=$((i + 1)) ;;
    --driver-java-options=*) own_jopts=1 ;;
    --py-files) own_pyfiles="${args[$((i + 1))]:-}"; i=$((i + 1)) ;;
    --py-files=*) own_pyfiles="${args[$i]#--py-files=}" ;;
    --conf|-c)  # a master or default filesystem set here may not be this machine's
      case "${args[$((i + 1))]:-}" in
        spark.master=*|*fs.defaultFS=*|*fs.default.name=*) other_fs=1 ;;
      esac
      i=$((i + 1)) ;;
    --verbose|-v|--supervise|--help|-h|--version|--*=*) ;;
    --*) i=$((i + 1)) ;;  # a spark-submit option and its value
    *) app_index=$i; break ;;  # the application: the rest are its own arguments
  esac
done

local_master=0
if [[ -z "$master" || "$master" == local* ]]; then
  local_master=1
fi
# scheme-less input paths are this machine's files only with a local master, this
# wrapper's own properties and no Hadoop configuration that could make another
# filesystem (HDFS) the default: spark-env.sh or core-site.xml in Spark's conf directory
inputs_local=$local_master
conf_dir="${SPARK_CONF_DIR:-$SPARK_HOME/conf}"
if [[ $own_props -eq 1 || $other_fs -eq 1 || -e "$conf_dir/spark-env.sh" \
      || -e "$conf_dir/core-site.xml" ]]; then
  inputs_local=0
fi

# the job's arguments, checked before the JVM starts (exit 10: handled, e.g. --help);
# with a local master, scheme-less input paths are this machine's files, checked too
if [[ $app_index -ge 0 && "${PMF_SPARK_CHECK_ARGS:-1}" != "0" ]]; then
  rc=0
  PMF_SPARK_LOCAL_MASTER="$inputs_local" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$DRIVER_PY" -m pmf_spark.cli check \
    "${args[$app_index]}" "${args[@]:$((app_index + 1))}" || rc=$?
  if [[ $rc -eq 10 ]]; then exit 0; elif [[ $rc -ne 0 ]]; then exit "$rc"; fi
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
# Ctrl-C: the JVM (and the Python workers it starts) inherit SIGINT ignored; the Python
# driver takes it (pmf_spark.cli.announce_driver) and writes its pid here, so SIGTERM to
# this script can be passed on to it.
pidfile="$(mktemp "${TMPDIR:-/tmp}/pmf-spark-driver.XXXXXX")"
export PMF_SPARK_DRIVER_PIDFILE="$pidfile"
( trap '' INT; exec "$SPARK_HOME/bin/spark-submit" "${extra[@]}" "$@" ) &
child=$!
interrupted=0
on_signal() {
  interrupted=1
  local pid; pid="$(cat "$pidfile" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    if [[ "$1" == TERM ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  else
    kill -TERM "$child" 2>/dev/null || true   # the driver has not started: nothing written
  fi
  return 0
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
if [[ $interrupted -eq 1 && ! -s "$pidfile" ]]; then
  echo "error: interrupted before the job started; nothing was written" >&2
  rc=130
fi
rm -f "$pidfile"
exit "$rc"
