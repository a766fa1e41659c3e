#!/usr/bin/env node
// A pkgloader client in another runtime: @grpc/grpc-js with stubs built at run time by
// @grpc/proto-loader from the same protos/ the Python stubs come from.
//
//   node load.js ADDRESS URL SHA256
//
// Loads the package with include_content and prints one JSON line: what the package item said and
// what actually arrived (byte count, sha256 computed here, chunk count). Exits 1 when the received
// bytes do not match the announced size and hash, 2 when the call fails (code and message on
// stderr as JSON).
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");

function main(argv) {
  if (argv.length !== 3) {
    process.stderr.write("usage: node load.js ADDRESS URL SHA256\n");
    return process.exit(64);
  }
  const [address, url, sha256] = argv;
  const definition = protoLoader.loadSync("pkgloader/v1/package_loader.proto", {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: Number, // sizes are far below 2^53
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkgloader = grpc.loadPackageDefinition(definition).pkgloader.v1;
  const client = new pkgloader.PackageLoaderService(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });

  const hash = crypto.createHash("sha256");
  let received = 0;
  let chunks = 0;
  let pkg = null;
  let failed = false;
  const deadline = new Date(Date.now() + 60_000);
  const call = client.Load(
    {
      summary: { package_id: "node-client", dist: { webc_url: url, webc_sha256: sha256 } },
      include_content: true,
    },
    { deadline },
  );
  call.on("data", (response) => {
    if (response.item === "package") {
      pkg = response.package;
    } else {
      hash.update(response.chunk);
      received += response.chunk.length;
      chunks += 1;
    }
  });
  call.on("error", (err) => {
    failed = true;
    process.stderr.write(JSON.stringify({ code: grpc.status[err.code], message: err.details }) + "\n");
    client.close();
    process.exitCode = 2;
  });
  call.on("end", () => {
    client.close();
    if (failed) return; // grpc-js may still end the stream after reporting its error
    if (pkg === null) {
      process.stderr.write("the stream ended without a package item\n");
      process.exitCode = 1;
      return;
    }
    const actual = hash.digest("hex");
    const result = {
      webc_sha256: pkg.webc_sha256,
      size: pkg.size,
      format: pkg.format,
      source: pkg.source,
      commands: pkg.manifest.commands.map((c) => c.name),
      received_bytes: received,
      received_sha256: actual,
      chunks,
    };
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exitCode = received === pkg.size && actual === pkg.webc_sha256 ? 0 : 1;
  });
}

main(process.argv.slice(2));
