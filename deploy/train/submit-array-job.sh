#!/usr/bin/env bash
# Submit the training fan-out as an AWS Batch array job of N = 4 children.
# Child I gets AWS_BATCH_JOB_ARRAY_INDEX=I (AWS Batch User Guide, "Array jobs",
# https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html), which
# `selfheal train --shards 4` reads; arrayProperties.size must equal --shards
# (deploy/check.py train checks it). Batch substitutes no variables in the
# command and the image has no shell, so the binary itself puts the index in
# the file name: `--out /models/shard-{shard}.json`, on an EFS volume (the one
# writable place: the root file system is read-only; "Amazon EFS volumes",
# https://docs.aws.amazon.com/batch/latest/userguide/efs-volumes.html).
# Register the definition once (set the image, execution role and file system first):
#   aws batch register-job-definition --cli-input-json file://deploy/train/batch-job-definition.json
# When every child succeeded, fold and publish the shards from the volume:
#   selfheal fleet merge --out policy.json /mnt/efs/selfheal-train/shard-*.json
#   selfheal fleet rollout --bucket B --prefix P policy.json
set -euo pipefail
queue=${1:?usage: submit-array-job.sh JOB_QUEUE}
aws batch submit-job \
    --job-name selfheal-train \
    --job-queue "$queue" \
    --job-definition selfheal-train \
    --array-properties size=4
