package main

import (
	"math/big"
	"strings"
	"testing"

	bridgev1 "kstb.dev/kstb/examples/go-client/gen/bridge/v1"
	"kstb.dev/kstb/examples/go-client/kstb"
)

func fixture(t *testing.T) (signed, *bridgev1.Transfer) {
	t.Helper()
	sender, _ := kstb.ParseEVMAddress("0x5151515151515151515151515151515151515151")
	recipient, _ := kstb.ParseEVMAddress("0x5252525252525252525252525252525252525252")
	sec, err := kstb.SecurityWord("KR7005930003")
	if err != nil {
		t.Fatal(err)
	}
	terms := kstb.Terms{
		Nonce: kstb.Keccak256([]byte("nonce")), Security: sec, Amount: big.NewInt(5),
		SrcLedger: kstb.LedgerWord("brokerage-a"), DstLedger: kstb.LedgerWord("brokerage-b"),
		Sender: kstb.AddressWord(sender), Recipient: kstb.AddressWord(recipient),
		Instructor: kstb.AddressWord(sender), Deadline: 1,
	}
	req := &bridgev1.SubmitTransferRequest{
		IdempotencyKey: "order-1", SecurityId: "KR7005930003", SourceLedger: "brokerage-a",
		TargetLedger: "brokerage-b", Sender: "0x5151515151515151515151515151515151515151",
		Recipient: "0x5252525252525252525252525252525252525252", Amount: "5",
	}
	s := signedTransfer(terms, req)
	answer := &bridgev1.Transfer{
		TransferId: terms.TransferID().Hex(), IdempotencyKey: "order-1",
		SecurityId: "KR7005930003", SourceLedger: "brokerage-a", TargetLedger: "brokerage-b",
		Sender: strings.ToUpper(req.Sender[2:]), Recipient: req.Recipient, Amount: "5",
		State: bridgev1.TransferState_TRANSFER_STATE_COMMITTED,
	}
	answer.Sender = "0x" + answer.Sender // addresses compare case-insensitively
	return s, answer
}

func TestCheckAcceptsTheSignedTransfer(t *testing.T) {
	s, answer := fixture(t)
	if err := s.check(answer); err != nil {
		t.Fatal(err)
	}
	s.req.Amount = "005" // the coordinator answers amounts normalised
	if err := s.check(answer); err != nil {
		t.Fatal(err)
	}
}

func TestCheckRefusesAnotherTransfer(t *testing.T) {
	for name, change := range map[string]func(*bridgev1.Transfer){
		"transfer_id":     func(t *bridgev1.Transfer) { t.TransferId = "0x" + strings.Repeat("ab", 32) },
		"idempotency_key": func(t *bridgev1.Transfer) { t.IdempotencyKey = "order-2" },
		"security_id":     func(t *bridgev1.Transfer) { t.SecurityId = "US0378331005" },
		"source_ledger":   func(t *bridgev1.Transfer) { t.SourceLedger = "brokerage-b" },
		"target_ledger":   func(t *bridgev1.Transfer) { t.TargetLedger = "brokerage-a" },
		"sender":          func(t *bridgev1.Transfer) { t.Sender = "0x" + strings.Repeat("53", 20) },
		"recipient":       func(t *bridgev1.Transfer) { t.Recipient = "0x" + strings.Repeat("53", 20) },
		"amount":          func(t *bridgev1.Transfer) { t.Amount = "50" },
	} {
		s, answer := fixture(t)
		change(answer)
		err := s.check(answer)
		if err == nil || !strings.Contains(err.Error(), name+" ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	s, _ := fixture(t)
	if err := s.check(nil); err == nil {
		t.Error("a missing transfer passed")
	}
}
