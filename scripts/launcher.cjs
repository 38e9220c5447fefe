#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node
'use strict';
/*
 * __COMMAND__: runs the bundled command (__COMMAND__.bundle.js) with V8's code cache of it
 * (__COMMAND__.bundle.js.cache, written by `npm run build`), so that Node neither parses nor compiles its
 * ~400 KiB again at every start (about 20 ms here; bench/NOTES.md, "Start-up, second pass"). V8 rejects
 * a cache made by another Node or with other V8 flags, and the bundle is then compiled as usual.
 * QCOW_CODE_CACHE=off ignores the cache; =check says on stderr whether it was used; =write (the build)
 * writes it as the command exits. Made from scripts/launcher.cjs by scripts/bundle.mjs.
 *
 * The first line: Node starts without reading NODE_EXTRA_CA_CERTS (it parses the whole file at start,
 * 40-60 ms with a system bundle); the command reads it at its first https open (src/io/trusted-ca.ts).
 */
const fs = require('node:fs');
const path = require('node:path');

const bundle = path.join(__dirname, '__COMMAND__.bundle.js');
const mode = process.env.QCOW_CODE_CACHE;
if (process.sourceMapsEnabled && mode !== 'write') {
  // --enable-source-maps: Node's own loader maps stack traces to src/, which it does not for a vm script.
  require(bundle);
} else {
  const vm = require('node:vm');
  const Module = require('node:module');
  const cacheFile = `${bundle}.cache`;
  let cachedData;
  if (mode !== 'off' && mode !== 'write') {
    try {
      cachedData = fs.readFileSync(cacheFile);
    } catch {
      // No cache (a build without one, an unreadable file): compile.
    }
  }
  const script = new vm.Script(Module.wrap(fs.readFileSync(bundle, 'utf8')), { filename: bundle, cachedData });
  if (mode === 'check') process.stderr.write(`code cache: ${cachedData === undefined ? 'none' : script.cachedDataRejected ? 'rejected' : 'used'}\n`);
  if (mode === 'write') {
    process.once('exit', () => {
      const part = `${cacheFile}.${process.pid}.part`;
      fs.writeFileSync(part, script.createCachedData());
      fs.renameSync(part, cacheFile);
    });
  }
  const module_ = { exports: {}, filename: bundle, id: '.', loaded: false };
  script.runInThisContext()(module_.exports, Module.createRequire(bundle), module_, bundle, __dirname);
}
