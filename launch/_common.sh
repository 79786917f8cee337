# Sourced by the launch scripts: `--dry-run` (anywhere among the arguments) prints the commands a
# script would run, one a line and quoted for the shell, instead of running them.
#
#   source "$(dirname "$0")/_common.sh"; parse_dry_run "$@"; set -- "${ARGS[@]}"
DRY_RUN=0
ARGS=()

parse_dry_run() {
  local a
  for a in "$@"; do
    if [[ "${a}" == --dry-run ]]; then DRY_RUN=1; else ARGS+=("${a}"); fi
  done
}

# Prints a command as one shell line (arguments quoted only where the shell needs it).
show() {
  local a out=()
  for a in "$@"; do
    if [[ "${a}" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("${a}"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

# Runs a command, or with --dry-run prints it.
run() {
  if ((DRY_RUN)); then show "$@"; else "$@"; fi
}
