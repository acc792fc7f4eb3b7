#!/bin/sh
# keys.sh -- generate the auth tests' key pairs with the openssl command line
#
# Usage: keys.sh DIR. Writes NAME.pem (private) and NAME.pub.pem (public) for: rsa, rsa2 (RSA
# 2048), ec (P-256), ec384 (P-384), ed (Ed25519), rsa1024 (too small, must be refused), and
# rsa.pkcs1.pem (the rsa public key in PKCS#1 form).
set -eu
d=$1
gen() {
  openssl genpkey "$@" -out "$d/$name.pem" 2>/dev/null
  openssl pkey -in "$d/$name.pem" -pubout -out "$d/$name.pub.pem"
}
name=rsa gen -algorithm RSA -pkeyopt rsa_keygen_bits:2048
name=rsa2 gen -algorithm RSA -pkeyopt rsa_keygen_bits:2048
name=rsa1024 gen -algorithm RSA -pkeyopt rsa_keygen_bits:1024
name=ec gen -algorithm EC -pkeyopt ec_paramgen_curve:P-256
name=ec384 gen -algorithm EC -pkeyopt ec_paramgen_curve:P-384
name=ed gen -algorithm ED25519
# the RSA public key also as PKCS#1 ("BEGIN RSA PUBLIC KEY")
openssl rsa -in "$d/rsa.pem" -RSAPublicKey_out -out "$d/rsa.pkcs1.pem" 2>/dev/null
