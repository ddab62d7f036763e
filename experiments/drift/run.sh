#!/usr/bin/env bash
# The drift study (experiments/drift/README.md): per adapter and seed, an adapt run on period 0 of a synthetic world,
# then the drift check of period 1 with domain d2 drifted by 0, 0.5 and 1, re-adapting what it flags. Run from the
# repository root; $PY is the Python of mdrec's environment (default .venv/bin/python).
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=${R:-logs/drift}
DATA="data.source.num_rows=60000 data.source.domain_shares=[0.4,0.3,0.2,0.1] trainer.max_epochs=5 threads=1"
for adapter in ${ADAPTERS:-iak lora}; do
  for s in ${SEEDS:-0 1 2 3 4}; do
    run=$R/$adapter/adapt_$s
    [ -f $run/drift_reference.npz ] || \
      $PY -m mdrec.train stage=adapt input=embedded adapter=$adapter $DATA data.source.seed=$s seed=$s hydra.run.dir=$run
    for a in 0 0.5 1; do
      $PY -m mdrec.train.drift $run --readapt +data.source.period=1 +data.source.drift_domain=d2 \
        +data.source.drift=$a threads=1 output_dir=$R/$adapter/drift_${s}_$a > /dev/null
    done
  done
done
$PY experiments/drift/table.py $R
