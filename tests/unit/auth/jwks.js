// jwks.js -- write a JWKS document from public key PEM files (Node.js crypto, for the auth tests)
//
// Usage: node jwks.js OUT KID=PEMFILE[:ALG] ...   (ALG optional: a key without "alg")
// Writes {"keys":[...]} to OUT atomically (temp file + rename), so a reader never sees half.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const [out, ...specs] = process.argv.slice(2);
const keys = specs.map((s) => {
  const [kid, rest] = s.split('=');
  const [file, alg] = rest.split(':');
  const jwk = crypto.createPublicKey(fs.readFileSync(file)).export({ format: 'jwk' });
  jwk.kid = kid;
  jwk.use = 'sig';
  if (alg) jwk.alg = alg;
  return jwk;
});
fs.writeFileSync(out + '.tmp', JSON.stringify({ keys }));
fs.renameSync(out + '.tmp', out);
