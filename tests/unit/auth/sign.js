// sign.js -- an independent JWS signer for the auth tests (Node.js crypto only, no packages)
//
// Usage: node sign.js ALG KEY HEADER_JSON PAYLOAD_JSON
//   ALG     HS256|HS384|HS512|RS256|RS384|RS512|ES256|ES384|ES512|EdDSA|none
//   KEY     a private key PEM file, "text:SECRET" (HMAC key as text), "file:PATH" (HMAC key is the
//           file's bytes, e.g. a public key PEM for the algorithm-confusion case), or "-" (none)
//   HEADER_JSON is used as given (so tests can lie in it); PAYLOAD_JSON likewise.
// Prints the compact token. The signature is made with ALG, whatever the header says.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const [alg, key, header, payload] = process.argv.slice(2);
const b64 = (b) => Buffer.from(b).toString('base64url');
const input = b64(header) + '.' + b64(payload);
const hash = { 256: 'sha256', 384: 'sha384', 512: 'sha512' }[alg.slice(2)];
let sig = Buffer.alloc(0);
if (alg.startsWith('HS')) {
  const secret = key.startsWith('text:') ? Buffer.from(key.slice(5)) : fs.readFileSync(key.slice(5));
  sig = crypto.createHmac(hash, secret).update(input).digest();
} else if (alg.startsWith('RS')) {
  sig = crypto.sign(hash, Buffer.from(input), fs.readFileSync(key));
} else if (alg.startsWith('ES')) {
  sig = crypto.sign(hash, Buffer.from(input), { key: fs.readFileSync(key), dsaEncoding: 'ieee-p1363' });
} else if (alg === 'EdDSA') {
  sig = crypto.sign(null, Buffer.from(input), fs.readFileSync(key));
}
process.stdout.write(input + '.' + b64(sig) + '\n');
