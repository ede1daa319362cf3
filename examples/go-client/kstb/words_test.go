package kstb

import (
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// The protocol's golden vectors, written by `python -m bridge.tools.core_vectors`.
type vectors struct {
	Tags            map[string]string `json:"tags"`
	SecurityWords   map[string]string `json:"security_words"`
	LedgerWords     map[string]string `json:"ledger_words"`
	EVMNetworkWords map[string]string `json:"evm_network_words"`
	Terms           []struct {
		Terms      map[string]json.RawMessage `json:"terms"`
		TermsHash  string                     `json:"terms_hash"`
		TransferID string                     `json:"transfer_id"`
	} `json:"terms"`
	Instructions []struct {
		Name        string  `json:"name"`
		Digest      string  `json:"digest"`
		Expect      *string `json:"expect"`
		Instruction string  `json:"instruction"`
		Instructor  string  `json:"instructor"`
		Network     string  `json:"network"`
		TermsHash   string  `json:"terms_hash"`
	} `json:"instructions"`
}

func load(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "bridge", "core", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func word(t *testing.T, text string) Word {
	t.Helper()
	raw, err := hex.DecodeString(strings.TrimPrefix(text, "0x"))
	if err != nil || len(raw) != 32 {
		t.Fatalf("bad word %q", text)
	}
	var w Word
	copy(w[:], raw)
	return w
}

func TestTagsAndWords(t *testing.T) {
	v := load(t)
	for name, want := range map[string]Word{
		"transfer": transferTag, "terms": termsTag, "instruction": instructionTag,
	} {
		if got := v.Tags[name]; got != want.Hex() {
			t.Errorf("tag %s: got %s, vectors %s", name, want.Hex(), got)
		}
	}
	for isin, want := range v.SecurityWords {
		w, err := SecurityWord(isin)
		if err != nil || w.Hex() != want {
			t.Errorf("security %s: %s %v", isin, w.Hex(), err)
		}
	}
	for name, want := range v.LedgerWords {
		if got := LedgerWord(name).Hex(); got != want {
			t.Errorf("ledger %s: %s != %s", name, got, want)
		}
	}
	for id, want := range v.EVMNetworkWords {
		n, _ := strconv.ParseUint(id, 10, 64)
		if got := EVMNetworkWord(n).Hex(); got != want {
			t.Errorf("chain %s: %s != %s", id, got, want)
		}
	}
}

func TestTermsHashAndTransferID(t *testing.T) {
	v := load(t)
	if len(v.Terms) == 0 {
		t.Fatal("no terms vectors")
	}
	for _, c := range v.Terms {
		w := func(k string) Word {
			var s string
			_ = json.Unmarshal(c.Terms[k], &s)
			return word(t, s)
		}
		var amount string
		var deadline uint64
		_ = json.Unmarshal(c.Terms["amount"], &amount)
		_ = json.Unmarshal(c.Terms["deadline"], &deadline)
		a, _ := new(big.Int).SetString(amount, 10)
		terms := Terms{
			Nonce: w("nonce"), Security: w("security"), Amount: a,
			SrcLedger: w("src_ledger"), SrcBridge: w("src_bridge"),
			DstLedger: w("dst_ledger"), DstBridge: w("dst_bridge"),
			Sender: w("sender"), Recipient: w("recipient"), Instructor: w("instructor"),
			Deadline: deadline,
		}
		if got := terms.TransferID().Hex(); got != c.TransferID {
			t.Errorf("transfer id %s != %s", got, c.TransferID)
		}
		h, err := terms.Hash()
		if err != nil || h.Hex() != c.TermsHash {
			t.Errorf("terms hash %s != %s (%v)", h.Hex(), c.TermsHash, err)
		}
	}
}

func TestInstructionDigestAndSignature(t *testing.T) {
	v := load(t)
	// The vectors' instructor is vector key 10: keccak256("KSTB/vector-key/10").
	seed := Keccak256([]byte("KSTB/vector-key/10"))
	key := &InstructionKey{priv: secp256k1.PrivKeyFromBytes(seed[:])}
	signed := 0
	for _, c := range v.Instructions {
		digest := InstructionDigest(word(t, c.Network), word(t, c.TermsHash))
		if digest.Hex() != c.Digest {
			t.Errorf("%s: digest %s != %s", c.Name, digest.Hex(), c.Digest)
		}
		if c.Expect != nil {
			continue
		}
		signed++
		if got := AddressWord(key.Address()).Hex(); got != c.Instructor {
			t.Fatalf("vector key 10 is %s, vectors name %s", got, c.Instructor)
		}
		// RFC 6979 makes the signature deterministic: byte-equal to the Python core's.
		if got := "0x" + hex.EncodeToString(key.Sign(digest)); got != c.Instruction {
			t.Errorf("%s: signature %s != %s", c.Name, got, c.Instruction)
		}
	}
	if signed == 0 {
		t.Fatal("no valid instruction vector")
	}
}

func TestRefusesMalformedInputs(t *testing.T) {
	if _, err := SecurityWord("kr7005930003"); err == nil {
		t.Error("a lowercase ISIN was accepted")
	}
	if _, err := ParseEVMAddress("0x1234"); err == nil {
		t.Error("a short address was accepted")
	}
	if _, err := (Terms{Amount: big.NewInt(0)}).Hash(); err == nil {
		t.Error("a zero amount was accepted")
	}
}
