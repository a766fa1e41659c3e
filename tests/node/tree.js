#!/usr/bin/env node
// LoadTree from another runtime: @grpc/grpc-js with stubs built at run time by
// @grpc/proto-loader from the same protos/ the Python stubs come from.
//
//   node tree.js ADDRESS REQUEST_JSON
//
// REQUEST_JSON is a LoadTreeRequest with proto field names (for example a specifier and a
// resolution); include_atoms is forced on. Reassembles every atom from its AtomChunk items and
// prints one JSON line: the tree's commands and, per atom, the bytes received, whether they start
// with "\0asm" and their sha256 computed here. Exits 1 when an atom is incomplete, out of order,
// not wasm or hashes to something else than its atom_sha256; 2 when the call fails (code and
// message on stderr as JSON).
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const WASM_MAGIC = Buffer.from([0x00, 0x61, 0x73, 0x6d]);

function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write("usage: node tree.js ADDRESS REQUEST_JSON\n");
    return process.exit(64);
  }
  const [address, requestJson] = argv;
  const definition = protoLoader.loadSync("pkgloader/v1/package_loader.proto", {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: Number, // sizes are far below 2^53
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkgloader = grpc.loadPackageDefinition(definition).pkgloader.v1;
  const client = new pkgloader.PackageLoaderService(address, grpc.credentials.createInsecure());

  const request = Object.assign(JSON.parse(requestJson), { include_atoms: true });
  let tree = null;
  let order = 0;
  const atoms = new Map(); // atom_sha256 -> {hash, received, offsetsOk, first, index}
  let current = null;
  let failed = false;
  const call = client.LoadTree(request, { deadline: new Date(Date.now() + 60_000) });
  call.on("data", (response) => {
    if (response.item === "package") {
      tree = response.package;
      return;
    }
    const chunk = response.atom;
    let atom = atoms.get(chunk.atom_sha256);
    if (atom === undefined) {
      atom = { hash: crypto.createHash("sha256"), received: 0, ok: true, head: null, index: order++ };
      atoms.set(chunk.atom_sha256, atom);
    } else if (current !== chunk.atom_sha256) {
      atom.ok = false; // an atom's chunks must be consecutive, each atom sent once
    }
    current = chunk.atom_sha256;
    if (chunk.offset !== atom.received) atom.ok = false;
    if (atom.head === null) atom.head = Buffer.from(chunk.data.subarray(0, 4));
    atom.hash.update(chunk.data);
    atom.received += chunk.data.length;
  });
  call.on("error", (err) => {
    failed = true;
    process.stderr.write(JSON.stringify({ code: grpc.status[err.code], message: err.details }) + "\n");
    client.close();
    process.exitCode = 2;
  });
  call.on("end", () => {
    client.close();
    if (failed) return;
    if (tree === null) {
      process.stderr.write("the stream ended without a package item\n");
      process.exitCode = 1;
      return;
    }
    const announced = new Map(tree.commands.map((c) => [c.atom_sha256, c.atom_size]));
    const report = [];
    let good = announced.size === atoms.size;
    for (const [sha, atom] of atoms) {
      const actual = atom.hash.digest("hex");
      const wasm = atom.head !== null && atom.head.equals(WASM_MAGIC);
      const ok = atom.ok && wasm && actual === sha && announced.get(sha) === atom.received;
      good = good && ok;
      report.push({ atom_sha256: sha, received_bytes: atom.received, received_sha256: actual, wasm, ok });
    }
    const result = {
      id: tree.id,
      commands: tree.commands.map((c) => ({ name: c.name, package: c.package, atom_sha256: c.atom_sha256 })),
      atoms: report,
    };
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exitCode = good ? 0 : 1;
  });
}

main(process.argv.slice(2));
