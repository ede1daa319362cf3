package main

import (
	"fmt"
	"math/big"
	"strings"

	bridgev1 "kstb.dev/kstb/examples/go-client/gen/bridge/v1"
	"kstb.dev/kstb/examples/go-client/kstb"
)

// signed is the transfer this client signed: its id computed locally from the terms
// (Terms.TransferID, checked against bridge/core/vectors.json in kstb/words_test.go) and
// the request's fields.
type signed struct {
	transferID string // 0x-prefixed lower-case hex, as the API gives it
	req        *bridgev1.SubmitTransferRequest
}

func signedTransfer(terms kstb.Terms, req *bridgev1.SubmitTransferRequest) signed {
	return signed{transferID: terms.TransferID().Hex(), req: req}
}

// check refuses a Transfer that is not the one signed. SECURITY: the id is recomputed
// from the signed terms, never taken from the coordinator's answer. A compromised (or
// wrong) coordinator could otherwise answer another transfer, e.g. an older COMMITTED one,
// and the client would book a settlement that never happened while its own instruction
// stays live until its deadline.
func (s signed) check(t *bridgev1.Transfer) error {
	if t == nil {
		return fmt.Errorf("the answer carries no transfer")
	}
	var diff []string
	same := func(name, got, want string, fold bool) {
		if got != want && !(fold && strings.EqualFold(got, want)) {
			diff = append(diff, fmt.Sprintf("%s %q (signed %q)", name, got, want))
		}
	}
	same("transfer_id", t.GetTransferId(), s.transferID, true)
	same("idempotency_key", t.GetIdempotencyKey(), s.req.GetIdempotencyKey(), false)
	same("security_id", t.GetSecurityId(), s.req.GetSecurityId(), false)
	same("source_ledger", t.GetSourceLedger(), s.req.GetSourceLedger(), false)
	same("target_ledger", t.GetTargetLedger(), s.req.GetTargetLedger(), false)
	same("sender", t.GetSender(), s.req.GetSender(), true)
	same("recipient", t.GetRecipient(), s.req.GetRecipient(), true)
	got, ok1 := new(big.Int).SetString(t.GetAmount(), 10)
	want, ok2 := new(big.Int).SetString(s.req.GetAmount(), 10)
	if !ok1 || !ok2 || got.Cmp(want) != 0 { // the coordinator answers the amount normalised
		diff = append(diff, fmt.Sprintf("amount %q (signed %q)", t.GetAmount(), s.req.GetAmount()))
	}
	if len(diff) > 0 {
		return fmt.Errorf("the coordinator answered a transfer that is not the one signed: %s",
			strings.Join(diff, ", "))
	}
	return nil
}
