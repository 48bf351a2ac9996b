# Debian packages from the machine's own apt sources (same mirror and release as the host), for
# the images this repo builds. Sourced by scripts/build-client-root and
# scripts/build-desktop-template; the caller defines say(), fail() and LOG.
#
#   debs_resolve PKG...        sets DEB_VERSIONS ("package version" a line): the closure of the
#                              packages over Depends and Pre-Depends, at their candidate versions.
#                              Names in DEB_PRUNE (space-separated) are left out together with
#                              what only they pull in.
#   debs_fetch DIR             downloads into DIR the packages of DEB_VERSIONS it lacks
#   debs_unpack DIR DEST       unpacks them into DEST with Debian's merged /usr

debs_resolve() {
  if ! apt-cache show "$@" >/dev/null 2>>"$LOG"; then
    say "refreshing the package lists"
    apt-get update -qq >>"$LOG" 2>&1 || fail "apt-get update"
  fi
  local closure
  if [ -z "${DEB_PRUNE:-}" ]; then
    # Virtual names (<...>) are satisfied by a real package that is listed too.
    closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "$@" 2>>"$LOG" | grep -v '^[ <]' | sort -u) \
      || fail "resolving the dependencies of $*"
  else
    closure=$(_debs_pruned_closure "$@") || fail "resolving the dependencies of $*"
  fi
  local pkgs
  mapfile -t pkgs <<<"$closure"
  DEB_VERSIONS=$(apt-cache policy "${pkgs[@]}" 2>>"$LOG" | awk '/^[^ ]/ { p = $1 } /Candidate:/ { print p, $2 }')
  DEB_COUNT=${#pkgs[@]}
}

# Breadth first over `apt-cache depends`, one call a level. Of alternatives (a | b) the first is
# taken; a virtual name takes its first provider unless one is already in the set.
_debs_pruned_closure() {
  local seen=" " frontier=("$@") next dep
  for dep in "$@"; do seen+="$dep "; done
  while [ ${#frontier[@]} -gt 0 ]; do
    next=()
    while read -r dep; do
      case "$seen" in *" $dep "*) continue ;; esac
      case " $DEB_PRUNE " in *" $dep "*) continue ;; esac
      seen+="$dep "; next+=("$dep")
    done < <(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${frontier[@]}" 2>>"$LOG" | awk -v seen="$seen" '
        function take(p) { sub(/:any$/, "", p); print p }
        /^[^ ]/ { skip = 0; virt = 0; next }
        /^  [|]?(Pre)?Depends: / {
          alt = ($1 ~ /^[|]/); p = $2; virt = 0
          if (skip) { skip = alt; next }
          skip = alt
          if (p ~ /^</) { virt = 1; found = 0; next }
          take(p); next
        }
        /^    / && virt == 1 {
          if (index(seen, " " $1 " ")) { virt = 2; next }
          take($1); virt = 2; next
        }
        /^  / { virt = 0 }')
    frontier=("${next[@]}")
  done
  printf '%s\n' $seen | sort -u
}

_debs_file() { ls "$1/${2%%:*}_${3/:/%3a}_"*.deb 2>/dev/null | head -n1; }

debs_fetch() {
  local dir=$1 missing=() p v
  mkdir -p "$dir"
  while read -r p v; do
    # Files are named package_version_arch.deb with the epoch's colon encoded as %3a.
    [ -n "$(_debs_file "$dir" "$p" "$v")" ] || missing+=("$p=$v")
  done <<<"$DEB_VERSIONS"
  if [ ${#missing[@]} -gt 0 ]; then
    say "downloading ${#missing[@]} of $DEB_COUNT packages"
    (cd "$dir" && apt-get download -qq "${missing[@]}" >>"$LOG" 2>&1) || fail "apt-get download"
  fi
}

debs_unpack() {
  local dir=$1 dest=$2 p v deb d
  say "unpacking $DEB_COUNT packages"
  mkdir -p "$dest/usr/bin" "$dest/usr/sbin" "$dest/usr/lib" "$dest/usr/lib64" "$dest/etc"
  # Debian's merged /usr: the top-level folders are links, and tar must go through them.
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$dest/$d"; done
  while read -r p v; do
    deb=$(_debs_file "$dir" "$p" "$v")
    [ -n "$deb" ] || fail "no download of $p $v"
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$dest" 2>>"$LOG" \
      || fail "unpacking $deb"
  done <<<"$DEB_VERSIONS"
}
