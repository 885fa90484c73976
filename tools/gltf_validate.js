// Validate a glTF/GLB with the Khronos glTF-Validator (npm gltf-validator): node tools/gltf_validate.js file.glb
// Prints a JSON summary; exit 1 if the file has errors, 2 if it cannot be read.
const fs = require('fs'), path = require('path');
const validator = require('gltf-validator');
const file = process.argv[2];
const data = new Uint8Array(fs.readFileSync(file));
validator.validateBytes(data, {
  uri: path.basename(file), maxIssues: 100,
  externalResourceFunction: (uri) => new Promise((res, rej) => {
    fs.readFile(path.join(path.dirname(file), decodeURIComponent(uri)), (e, d) => e ? rej(e.toString()) : res(new Uint8Array(d)));
  }),
}).then((r) => {
  const out = { validatorVersion: r.validatorVersion, numErrors: r.issues.numErrors,
    numWarnings: r.issues.numWarnings, numInfos: r.issues.numInfos, numHints: r.issues.numHints,
    messages: r.issues.messages.map(m => ({code: m.code, severity: ['error','warning','info','hint'][m.severity], message: m.message, pointer: m.pointer})),
    info: r.info };
  console.log(JSON.stringify(out, null, 1));
  process.exit(out.numErrors > 0 ? 1 : 0);
}, (e) => { console.error(e); process.exit(2); });
