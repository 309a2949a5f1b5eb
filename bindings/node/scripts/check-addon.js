#!/usr/bin/env node
// Run by `npm pack` / `npm publish` (prepack). The debug addon the test
// suite builds and the release one share a file name, so a plain `npm pack`
// used to ship whichever was built last: once a 46 MB debug build. This
// refuses an addon that still carries debug information or symbols, and
// says how to build the one to ship.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

// Section names of an ELF file (64-bit little-endian, what napi builds on
// Linux x86_64); null for another format, which is not checked.
function elfSections(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 64 || buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2 || buf[5] !== 1) return null;
  const shoff = Number(buf.readBigUInt64LE(0x28));
  const shentsize = buf.readUInt16LE(0x3a);
  const shnum = buf.readUInt16LE(0x3c);
  const shstrndx = buf.readUInt16LE(0x3e);
  const header = (i) => shoff + i * shentsize;
  const strtab = Number(buf.readBigUInt64LE(header(shstrndx) + 0x18));
  const names = [];
  for (let i = 0; i < shnum; i++) {
    const at = strtab + buf.readUInt32LE(header(i));
    names.push(buf.toString("latin1", at, buf.indexOf(0, at)));
  }
  return names;
}

const dir = path.join(__dirname, "..");
const addons = fs.readdirSync(dir).filter((f) => f.endsWith(".node"));
if (addons.length === 0) {
  console.error("prepack: no addon (*.node) to pack: run `npm run build` first (or scripts/package.sh at the repository's root)");
  process.exit(1);
}
if (process.env.TASKER_PACK_DEBUG === "1") process.exit(0);
for (const addon of addons) {
  const sections = elfSections(path.join(dir, addon));
  if (sections === null) continue;
  const extra = sections.filter((s) => s === ".debug_info" || s === ".symtab");
  if (extra.length > 0) {
    const mb = (fs.statSync(path.join(dir, addon)).size / 1e6).toFixed(1);
    console.error(
      `prepack: ${addon} (${mb} MB) is not a stripped release build (it has ${extra.join(", ")}). ` +
        "Run `npm run build` (release, stripped) before `npm pack`, or `bash scripts/package.sh` at the " +
        "repository's root; TASKER_PACK_DEBUG=1 packs it anyway.",
    );
    process.exit(1);
  }
}
