#!/usr/bin/env bash
# The GPU checks of one call of the device tool, prepared so that a session lent a GPU spends
# its few device minutes measuring instead of setting up (ROADMAP item 1, issue #10's GPU
# numbers): the CUDA tests, the ensemble benchmark (target: 10 members at most 3x one member),
# training members together against apart, the attack benchmark (part 1: PART=1, the default);
# one large sharded cell (benchmarks/sharding.py: MNIST, 10,000 images, PGD-40, whole and over
# 1 and 2 workers) and issue 24's three: early exit against the peers, the suite against
# AutoAttack and the optimality table (part 2: PART=2; the peers are not in the device image:
# those benchmarks skip them and say so; advx's own rows remain). A part fits one call of the
# device tool (its steps' limits add up to 540 and 360 s). Each step has its own
# time limit, so that one that hangs costs its own results only. $OUT gets the part's results
# tables (.md), steps.txt (each step's exit status and seconds), env.txt (device, versions) and
# device-check.tar.gz with everything (logs, .json): at most seven files, under the tool's eight.
#
# The device image has torch, pytest, rich, scikit-learn, numpy and pluggy, but no pydantic
# and no network. Before the call, here, in the repository root (this machine has the
# network and the data):
#
#   grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
#   grep -qx '/.data/' .git/info/exclude || echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   mkdir -p .data && cp -r ../shared/data/mnist .data/
#   grep -qx '/.advx-cache/' .git/info/exclude || echo /.advx-cache/ >> .git/info/exclude
#   python benchmarks/_models.py   # trains (or finds) the issue-24 models on the CPU, in the cache
#   mkdir -p .advx-cache/models && cp ~/.cache/advx/models/mnist-cnn-*.pt .advx-cache/models/
#
# (the models of benchmarks/_models.py are trained on the CPU whatever the device, so these
# checkpoints are the ones a GPU run looks up: carry ".advx-cache" too, 8 paths at most)
#
# then call the device tool's run with
#
#   command = "bash benchmarks/device_check.sh", carry = [".whl", ".data", ".advx-cache"], timeout_s = 560
#   (then command = "PART=2 bash benchmarks/device_check.sh", the same carry and limit)
#
# and copy the files that come back into benchmarks/results/ (ensemble-cuda.*,
# ensemble-train-cuda.*, attacks-cuda.*; with PART=2 sharding-cuda.*, early-exit-peers-cuda.*,
# suite-vs-autoattack-cuda.*, optimality-cuda.*), naming the device in the results' text.
# Run here with DEVICE=cpu it checks the script itself on a small budget (no GPU needed).
set -u
OUT=${OUT:-/tmp/advx-device-check}
DEVICE=${DEVICE:-cuda}
W=$(mktemp -d)  # the work folder, bundled into $OUT at the end
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run one step under its own limit, log to $W/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$W/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$W/steps.txt"
}

bundle() {
    cp "$W"/*.md "$W/steps.txt" "$W/env.txt" "$OUT"/ 2> /dev/null
    tar -czf "$OUT/device-check.tar.gz" -C "$W" .
    ls -l "$OUT"
}

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/advx-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/advx-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import advx" 2> /dev/null; then
    # offline: no build isolation (setuptools is in the image), no dependency resolution
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$W/install.log" 2>&1 || { cat "$W/install.log"; exit 1; }
fi
{
    nvidia-smi -L 2> /dev/null || echo "no nvidia-smi"
    $PY -c "import torch, advx; print('torch', torch.__version__, 'advx', advx.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} > "$W/env.txt" 2>&1
cat "$W/env.txt"

if [ "$DEVICE" = cpu ]; then  # a smoke run of the script: tiny budgets, nothing written to benchmarks/results
    step ensemble 120 $PY benchmarks/ensemble.py --device cpu --repeats 1 --members 2 --out "$W"
    step sharding 120 $PY benchmarks/sharding.py --dataset digits --samples 500 --steps 2 --batch-size 125 --shard-size 250 --epochs 1 --rows unsharded "workers 2" --out "$W/sharding-cpu-smoke"
    bundle
    exit 0
fi
if [ "${PART:-1}" = 2 ]; then
    export ADVX_DATA=$PWD/.data ADVX_CACHE_DIR=$PWD/.advx-cache
    # one large cell in shards (issue #23): the whole cell against its shards on 1 and 2 worker
    # processes sharing the GPU (no Ray in the image); the per-example records must be equal
    step sharding 150 $PY benchmarks/sharding.py --device cuda --rows unsharded "workers 1" "workers 2" --out "$W/sharding-cuda"
    step early-exit-peers 60 $PY benchmarks/early_exit_peers.py --device cuda --out "$W"
    step suite-vs-autoattack 90 $PY benchmarks/suite_vs_autoattack.py --device cuda --no-channels-last --out "$W"
    step optimality 60 $PY benchmarks/optimality.py --device cuda --out "$W"
    bundle
    exit 0
fi
step gpu-tests 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests
step ensemble 150 $PY benchmarks/ensemble.py --device cuda --repeats 15 --out "$W"
step ensemble-train 90 $PY benchmarks/ensemble.py --device cuda --train --repeats 5 --steps 10 --out "$W"
step attacks 150 $PY benchmarks/attacks.py --device cuda --no-peers --cases mnist --data .data --out "$W"
bundle
