#!/usr/bin/env bash
# IAK ablations on the synthetic default (see README.md); every variant x seeds 0-2 into its own sweep directory.
set -euo pipefail
R=${R:-logs/iak_ablation/multiruns}
SEEDS=${SEEDS:-0,1,2}
base=(stage=adapt input=embedded adapter=iak adapter.placement=layers stage.optimizer.lr=0.003 "seed=$SEEDS" task_name=iak_ablation)
run() { local name=$1; shift; mdrec-train -m "${base[@]}" "$@" hydra.sweep.dir="$R/$name"; }
run default
run no_kl adapter.kl=false
run encoder_only adapter.encoder_only=true
run no_residual adapter.residual=false
run dynamic_lr callbacks=dynamic_lr
run k adapter.bottleneck=10,25,100,200
run beta adapter.beta=0.0001,0.01,0.1
