#!/bin/sh
# Builds qcow-mount's native FUSE back-end (npm runs this on install). It needs libfuse3-dev,
# pkg-config, make and a C compiler; without them the build is skipped with one line and mounts use
# fuse-native (-o fuse=compat) instead. liburing-dev adds -o fuse_uring's rings (binding.gyp).
# --if-stale (npm run build): only when the addon is missing or older than its sources.
cd "$(dirname "$0")" || exit 0
if [ "${1:-}" = "--if-stale" ] && [ -f build/Release/qcow_fuse3.node ] &&
  [ -z "$(find src binding.gyp -newer build/Release/qcow_fuse3.node 2>/dev/null)" ]; then
  exit 0
fi
set --
# Node's own headers when it ships them (Debian, NodeSource, official tarballs): no download.
nodedir=$(dirname "$(dirname "$(command -v node)")")
[ -f "$nodedir/include/node/node_api.h" ] && set -- "--nodedir=$nodedir"
if command -v node-gyp >/dev/null 2>&1; then gyp=node-gyp
else gyp="node $(npm prefix -g 2>/dev/null)/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js"
fi
if $gyp rebuild "$@" >build.log 2>&1; then
  rm -f build.log
else
  rm -rf build
  echo "qcow-mount: the native FUSE back-end was not built (needs libfuse3-dev, pkg-config, make, cc; see native/build.log); mounts will use fuse-native"
fi
exit 0
