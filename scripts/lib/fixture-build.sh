# Sourced by scripts/make-*-fixtures.sh: what every fixture set shares. A set is up to date when its
# .stamp matches (a no-op then); one builder at a time per output folder (tests may start several runs
# at once); a set is built in a sibling temporary folder and swapped into place whole, so an
# interrupted run never leaves half a set behind.
#
#   FIXTURE_NAME=make-foo-fixtures; . "$SCRIPT_DIR/lib/fixture-build.sh"    # also gives die MESSAGE
#   fixture_need "apt-get install ..." qemu-img ...
#   STAMP=$(fixture_stamp FILE... <<<"tool versions")
#   fixture_begin "$OUTDIR"          # exits 0 when up to date; else sets BUILD (and PARENT, BASE)
#   ... build into $BUILD ...
#   fixture_finish                   # writes $BUILD/.stamp and swaps $BUILD into $OUTDIR

die() {
  echo "$FIXTURE_NAME: $*" >&2
  exit 1
}

# fixture_need HINT TOOL...: dies naming the first tool missing from PATH, and HINT (how to install).
fixture_need() {
  local hint=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found in PATH${hint:+ ($hint)}"
  done
}

# fixture_stamp FILE...: one hash of the files' contents (this library's too) and of standard input
# (the versions of the tools that make the set).
fixture_stamp() {
  {
    local f
    for f in "${BASH_SOURCE[0]}" "$@"; do
      [[ -f $f ]] || die "missing $f"
      sha256sum <"$f" | cut -d' ' -f1
    done
    cat
  } | sha256sum | cut -d' ' -f1
}

fixture_up_to_date() {
  [[ -f $OUTDIR/.stamp && -f $OUTDIR/manifest.json && "$(cat "$OUTDIR/.stamp")" == "$STAMP" ]]
}

# fixture_begin OUTDIR: exits the script when the set there is up to date (also after waiting for a
# concurrent builder); otherwise takes the folder's lock (fd 9, held until the script exits), clears
# what interrupted runs left and makes the temporary folder BUILD beside OUTDIR.
fixture_begin() {
  OUTDIR=$1
  fixture_up_to_date && exit 0
  PARENT=$(dirname "$OUTDIR")
  BASE=$(basename "$OUTDIR")
  mkdir -p "$PARENT"
  exec 9>"/tmp/qcow-mount-fixture-build-$(echo "$OUTDIR" | sha256sum | cut -c1-16).lock"
  flock 9
  fixture_up_to_date && exit 0
  rm -rf "$PARENT/.$BASE.tmp."* "$PARENT/.$BASE.old."*
  BUILD=$(mktemp -d "$PARENT/.$BASE.tmp.XXXXXX")
  chmod 755 "$BUILD" # readable by the unprivileged-mount tests
  FIXTURE_T0=$(date +%s)
}

# fixture_finish: stamps the build and swaps it into OUTDIR (the old set moves aside first, then goes).
fixture_finish() {
  echo "$STAMP" >"$BUILD/.stamp"
  cd / || exit 1
  local old=""
  if [[ -e $OUTDIR ]]; then
    old="$PARENT/.$BASE.old.$$"
    mv "$OUTDIR" "$old"
  fi
  mv "$BUILD" "$OUTDIR"
  [[ -n $old ]] && rm -rf "$old"
  echo "$FIXTURE_NAME: done in $OUTDIR ($(du -sh "$OUTDIR" | cut -f1) on disk) in $(($(date +%s) - FIXTURE_T0)) s"
}
