#!/bin/bash
# Waits while the given pattern runs, then takes stages from queue.txt (one line each) until it is empty.
wait_for=$1
while pgrep -f "$wait_for" | grep -vx "$$" > /dev/null; do sleep 15; done
cd /work/gap_study
while true; do
  stage=$(flock queue.lock bash -c 'head -1 queue.txt; sed -i 1d queue.txt')
  [ -z "$stage" ] && exit 0
  ./worker.sh none "$stage"
done
