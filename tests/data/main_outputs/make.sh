#!/bin/sh
# How the outputs here were made: by llmbatch as it was before the Responses API,
# completions and moderations (main at a0ecd27), offline with the fake model. Run from
# this folder with that tree first on the path:  PYTHONPATH=/path/to/that/tree sh make.sh
# tests/test_endpoint_reruns.py reruns each with today's llmbatch: nothing is redone.
set -e
run() { python -m llmbatch run "$@" --provider fake -q --fresh ; }
run items.jsonl -o chat_template.out.jsonl --prompt 'Review: {text}' --id-field id --system 'Be terse.' \
    --max-tokens 40 --schema review.schema.json --param temperature=0 --merged
run items.jsonl -o embeddings_template.out.jsonl --prompt '{text}' --id-field id --endpoint /v1/embeddings
run bodies.jsonl -o bodies.out.jsonl --schema review.schema.json
run chat_bodies.jsonl -o chat_bodies.out.jsonl --max-tokens 30
run batch_lines.jsonl -o batch_lines.out.jsonl --max-tokens 20
