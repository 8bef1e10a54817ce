# shellcheck shell=bash
# Sourced by the wrappers run_pretraining.sh, run_squad.sh and run_glue.sh.
# ${a[@]+"${a[@]}"} expands a possibly empty array: under set -u bash before 4.4 (RHEL/CentOS 7
# ship 4.2) calls an empty "${a[@]}" an unbound variable.

# glibc's thread cache keeps the slivers that torch's aligned allocations split off, so a
# freed large block is not reused and each step faults in fresh pages (see
# utils.reuse_freed_memory): without the cache SST-2 bf16 fine-tuning ran 6-16% faster.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.tcache_count=0}

# set_precision_flags PRECISION: the entry scripts' flag for fp16 | bf16 | tf32 | fp32 (no
# flag) in the array PRECISION_FLAGS; any other value stops the wrapper.
# shellcheck disable=SC2034  # PRECISION_FLAGS is read by the wrapper
set_precision_flags() {
  case "$1" in
    fp16|bf16|tf32) PRECISION_FLAGS=("--$1") ;;
    fp32) PRECISION_FLAGS=() ;;
    *) echo "precision must be fp16, bf16, tf32 or fp32, not '$1'" >&2; exit 2 ;;
  esac
}
