package kstb

import (
	"encoding/hex"
	"errors"
	"os"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// InstructionKey is a brokerage's secp256k1 instruction key (registered for its ledger).
type InstructionKey struct{ priv *secp256k1.PrivateKey }

// LoadInstructionKey reads a key file holding the private key as (0x-prefixed) hex.
// SECURITY: a production brokerage keeps this key in an HSM; a file is for the devnet.
func LoadInstructionKey(path string) (*InstructionKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(string(raw)), "0x"))
	if err != nil || len(b) != 32 {
		return nil, errors.New("an instruction key file holds 32 bytes of hex")
	}
	return &InstructionKey{priv: secp256k1.PrivKeyFromBytes(b)}, nil
}

// Address is the key's 20-byte Ethereum-style address (keccak256 of the public key).
func (k *InstructionKey) Address() [20]byte {
	pub := k.priv.PubKey().SerializeUncompressed()
	h := Keccak256(pub[1:])
	var a [20]byte
	copy(a[:], h[12:])
	return a
}

// Sign returns the 65-byte r||s||v signature (low s, v 27/28, no EIP-191 prefix) the
// ledgers and the coordinator verify (bridge/core/signatures.py).
func (k *InstructionKey) Sign(digest Word) []byte {
	// SignCompact: header (27 + recovery id, uncompressed) || r || s, RFC 6979, low s.
	compact := ecdsa.SignCompact(k.priv, digest[:], false)
	out := make([]byte, 65)
	copy(out, compact[1:])
	out[64] = compact[0]
	return out
}
