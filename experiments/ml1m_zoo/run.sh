#!/usr/bin/env bash
# The zoo's new rows on MovieLens-1M (experiments/ml1m_zoo/README.md): the DNN (the same-commit reference) and every
# new model's recipe under the 3 age domains (SEEDS, default 0 1 2), then every zoo model, old and new, under the 21
# occupation domains (OCC_SEEDS, default 0); one thread per run, runs already finished (metrics.json) are skipped.
# Run from the repository root; $PY is the Python of mdrec's environment (default .venv/bin/python).
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=${R:-logs/ml1m_zoo}
NEW="ml1m_pepnet ml1m_epnet ml1m_ppnet ml1m_m2m ml1m_adasparse ml1m_apg ml1m_hamur ml1m_sarnet ml1m_m3oe ml1m_hmoe
  ml1m_adaptdhm"
OLD="ml1m ml1m_wide_deep ml1m_dcnv2 ml1m_pooled ml1m_single_domain ml1m_shared_bottom ml1m_mmoe ml1m_ple ml1m_star"
run() {  # <study> <experiment> <seed> [overrides ...]
  out=$R/$1/$2_s$3
  mkdir -p $R/$1
  [ -f $out/metrics.json ] || $PY -m mdrec.train experiment=$2 seed=$3 threads=1 "${@:4}" \
    trainer.enable_progress_bar=false '~callbacks.progress_bar' hydra.run.dir=$out > $out.log 2>&1
}
for s in ${SEEDS:-0 1 2}; do for e in ml1m $NEW; do run ages $e $s; done; done
for s in ${OCC_SEEDS:-0}; do for e in $OLD $NEW; do run occupation $e $s data.source.domain_by=occupation; done; done
