// Package kstb holds what a brokerage computes before it submits a transfer (protocol v2):
// the 32-byte words of the terms, the terms hash, the instruction digest and the
// instruction signature. It is a transcription of bridge/core (Python), checked against
// the protocol's golden vectors (bridge/core/vectors.json) by words_test.go.
package kstb

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"

	"golang.org/x/crypto/sha3"
)

// ProtocolVersion is the protocol version bound into every digest.
const ProtocolVersion = 2

// Word is one 32-byte ABI word.
type Word [32]byte

// Hex renders the word as 0x-prefixed lowercase hex.
func (w Word) Hex() string { return "0x" + hex.EncodeToString(w[:]) }

// Keccak256 is Ethereum's Keccak-256 (not SHA3-256).
func Keccak256(parts ...[]byte) Word {
	h := sha3.NewLegacyKeccak256()
	for _, p := range parts {
		h.Write(p)
	}
	var w Word
	copy(w[:], h.Sum(nil))
	return w
}

// Tag is a domain-separation tag: keccak256(name).
func Tag(name string) Word { return Keccak256([]byte(name)) }

var (
	transferTag    = Tag("KSTB/transfer-id/v2")
	termsTag       = Tag("KSTB/terms/v2")
	instructionTag = Tag("KSTB/instruction/v2")
)

var isinRE = regexp.MustCompile(`^[A-Z]{2}[A-Z0-9]{9}[0-9]$`)

// SecurityWord is the ISIN as ASCII right-padded with zero bytes (the coordinator checks
// the ISIN's check digit; this only refuses what cannot be one).
func SecurityWord(isin string) (Word, error) {
	var w Word
	if !isinRE.MatchString(isin) {
		return w, fmt.Errorf("%q is not an ISIN", isin)
	}
	copy(w[:], isin)
	return w, nil
}

// LedgerWord is keccak256(ledger name).
func LedgerWord(name string) Word { return Keccak256([]byte(name)) }

// ParseEVMAddress parses a 0x-prefixed 20-byte hex address (any case).
func ParseEVMAddress(text string) ([20]byte, error) {
	var a [20]byte
	body := strings.TrimPrefix(text, "0x")
	raw, err := hex.DecodeString(body)
	if err != nil || len(raw) != 20 {
		return a, fmt.Errorf("%q is not a 0x-prefixed 20-byte address", text)
	}
	copy(a[:], raw)
	return a, nil
}

// AddressWord is a 20-byte address left-padded to a word (bytes32(uint256(uint160(a)))).
func AddressWord(a [20]byte) Word {
	var w Word
	copy(w[12:], a[:])
	return w
}

// EVMNetworkWord is an EVM ledger's network word: bytes32(uint256(chainid)).
func EVMNetworkWord(chainID uint64) Word { return uintWord(new(big.Int).SetUint64(chainID)) }

func uintWord(v *big.Int) Word {
	var w Word
	v.FillBytes(w[:])
	return w
}

// Terms are the terms of one transfer exactly as the ledgers and the committee see them
// (proto bridge.v1.Terms; BridgeTypes.Terms on EVM).
type Terms struct {
	Nonce      Word
	Security   Word
	Amount     *big.Int
	SrcLedger  Word
	SrcBridge  Word
	DstLedger  Word
	DstBridge  Word
	Sender     Word
	Recipient  Word
	Instructor Word
	Deadline   uint64
}

var uint256Limit = new(big.Int).Lsh(big.NewInt(1), 256)

// TransferID is keccak256(abi.encode(TRANSFER_TAG, srcLedger, srcBridge, sender,
// instructor, nonce)).
func (t Terms) TransferID() Word {
	return Keccak256(transferTag[:], t.SrcLedger[:], t.SrcBridge[:], t.Sender[:],
		t.Instructor[:], t.Nonce[:])
}

// Hash is keccak256(abi.encode(TERMS_TAG, id, security, amount, src, srcBridge, dst,
// dstBridge, sender, recipient, instructor, uint64 deadline)).
func (t Terms) Hash() (Word, error) {
	if t.Amount == nil || t.Amount.Sign() <= 0 || t.Amount.Cmp(uint256Limit) >= 0 {
		return Word{}, errors.New("amount must be 1 .. 2^256-1")
	}
	id := t.TransferID()
	amount := uintWord(t.Amount)
	deadline := uintWord(new(big.Int).SetUint64(t.Deadline))
	return Keccak256(termsTag[:], id[:], t.Security[:], amount[:], t.SrcLedger[:],
		t.SrcBridge[:], t.DstLedger[:], t.DstBridge[:], t.Sender[:], t.Recipient[:],
		t.Instructor[:], deadline[:]), nil
}

// InstructionDigest is what the instructing brokerage signs to authorise the lock:
// keccak256(abi.encode(INSTRUCTION_TAG, uint16 2, network of the source ledger, termsHash)).
func InstructionDigest(network, termsHash Word) Word {
	version := uintWord(big.NewInt(ProtocolVersion))
	return Keccak256(instructionTag[:], version[:], network[:], termsHash[:])
}
