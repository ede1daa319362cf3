// Command go-client is an example brokerage client of the KSTB bridge in Go, generated from
// the bridge's protos (proto/bridge/v1). It
//
//  1. dials the coordinator with the brokerage's mTLS certificate, trusting only the CAs of
//     the organisations the network file grants the coordinator role, and checking that the
//     server's certificate names that role (coordinator.kstb-role);
//  2. builds the transfer's terms and signs the instruction with the brokerage's instruction
//     key (protocol v2), choosing the nonce and deadline ONCE per idempotency key and keeping
//     them in -state, so every retry (even after a crash) sends the same request;
//  3. submits it, retrying only what is safe to retry (UNAVAILABLE, DEADLINE_EXCEEDED, or a
//     refusal whose ErrorInfo says retryable=true) with the same idempotency key;
//  4. watches it to a terminal state, resuming the stream when it breaks (a resumed watch
//     replays from sequence 1: updates already seen are skipped);
//  5. on a refusal, decodes the structured details (google.rpc.ErrorInfo, RetryInfo);
//  6. checks every answer against what it signed: the transfer id is recomputed from the
//     signed terms (Terms.TransferID) and the answer's id, key, security, ledgers, sender,
//     recipient and amount must match, in the submit response and in every watched update
//     (verify.go). Confirm a COMMITTED transfer on your own ledger before booking it.
//
// It prints one JSON object per line:
// {"event":"submitted"|"update"|"terminal"|"refused"|"mismatch"}.
// Exit codes: 0 COMMITTED, 1 usage or local error, 2 refused, 3 ABORTED or FAILED,
// 4 the coordinator answered a transfer other than the one signed (do not book it).
//
// Only EVM ledgers are encoded here (bridge word = the endpoint address, network word =
// the chain id); a Fabric ledger's words are keccak256("fabric:<channel>:<chaincode>") and
// its channel's genesis hash (docs/brokerage-integration.md).
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/BurntSushi/toml"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	bridgev1 "kstb.dev/kstb/examples/go-client/gen/bridge/v1"
	"kstb.dev/kstb/examples/go-client/kstb"
)

// network is the part of the bridge's network file a brokerage client reads.
type network struct {
	Ledgers []struct {
		ID      string `toml:"id"`
		Kind    string `toml:"kind"`
		Bridge  string `toml:"bridge"`
		ChainID uint64 `toml:"chain_id"`
	} `toml:"ledgers"`
	Organisations []struct {
		ID    string   `toml:"id"`
		CA    string   `toml:"ca"`
		Roles []string `toml:"roles"`
	} `toml:"organisations"`
}

type ledger struct{ ledgerWord, bridgeWord, networkWord kstb.Word }

func (n network) ledger(name string) (ledger, error) {
	for _, l := range n.Ledgers {
		if l.ID != name {
			continue
		}
		if l.Kind != "evm" {
			return ledger{}, fmt.Errorf("ledger %s is %s: this example encodes EVM ledgers only", name, l.Kind)
		}
		bridge, err := kstb.ParseEVMAddress(l.Bridge)
		if err != nil {
			return ledger{}, fmt.Errorf("ledger %s: bridge: %w", name, err)
		}
		return ledger{kstb.LedgerWord(name), kstb.AddressWord(bridge), kstb.EVMNetworkWord(l.ChainID)}, nil
	}
	return ledger{}, fmt.Errorf("ledger %s is not in the network file", name)
}

// coordinatorRoots are the CAs of the organisations holding role "coordinator".
// SECURITY: any CA a client trusts could mint a certificate for any role, so only the role
// holders' CAs are trusted (as bridge/rpc/tls.py client_roots does).
func (n network) coordinatorRoots(base string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	found := false
	for _, o := range n.Organisations {
		if !slices.Contains(o.Roles, "coordinator") {
			continue
		}
		path := o.CA
		if !filepath.IsAbs(path) {
			path = filepath.Join(base, path)
		}
		pem, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("organisation %s: no certificate in %s", o.ID, path)
		}
		found = true
	}
	if !found {
		return nil, errors.New("no organisation holds role coordinator in the network file")
	}
	return pool, nil
}

// chosen is what is fixed once per idempotency key: the nonce and the deadline.
type chosen struct {
	Nonce    string `json:"nonce"`
	Deadline uint64 `json:"deadline"`
}

// choose returns the nonce and deadline of key, choosing and durably recording them first
// if this is the key's first use. A retry after a crash therefore signs the same terms
// (same transfer id), and the coordinator answers it with the transfer already made.
func choose(dir, key string, ttl time.Duration) (chosen, error) {
	sum := sha256.Sum256([]byte(key))
	path := filepath.Join(dir, hex.EncodeToString(sum[:])+".json")
	if raw, err := os.ReadFile(path); err == nil {
		var c chosen
		return c, json.Unmarshal(raw, &c)
	}
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return chosen{}, err
	}
	// As bridge/domain/instructions.py make_nonce: SHA-256 of the key and a secret salt.
	nonce := sha256.Sum256(slices.Concat([]byte("KSTB/nonce/v2\x00"), []byte(key), []byte{0}, salt))
	c := chosen{Nonce: hex.EncodeToString(nonce[:]), Deadline: uint64(time.Now().Add(ttl).Unix())}
	raw, _ := json.Marshal(c)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c, err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return c, err
	}
	return c, os.Rename(tmp, path)
}

func emit(v map[string]any) {
	raw, _ := json.Marshal(v)
	fmt.Println(string(raw))
}

// refusal is a failed call's structured details (ADR 0015, docs/operators/brokerage-errors.md).
type refusal struct {
	code      codes.Code
	reason    string // "UNKNOWN" when the details are absent or foreign: never parse the message
	retryable bool
	metadata  map[string]string
	retryIn   time.Duration
	message   string
}

func decode(err error) refusal {
	st := status.Convert(err)
	r := refusal{code: st.Code(), reason: "UNKNOWN", message: st.Message(), metadata: map[string]string{}}
	for _, d := range st.Details() {
		switch info := d.(type) {
		case *errdetails.ErrorInfo:
			if info.GetDomain() == "kstb.bridge" {
				r.reason = info.GetReason()
				r.metadata = info.GetMetadata()
				r.retryable = info.GetMetadata()["retryable"] == "true"
			}
		case *errdetails.RetryInfo:
			r.retryIn = info.GetRetryDelay().AsDuration()
		}
	}
	if r.reason == "UNKNOWN" {
		// No bridge details (a proxy, a dead connection): only transport codes are retried.
		r.retryable = r.code == codes.Unavailable || r.code == codes.DeadlineExceeded
	}
	return r
}

func (r refusal) emit() {
	emit(map[string]any{
		"event": "refused", "code": r.code.String(), "reason": r.reason, "retryable": r.retryable,
		"metadata": r.metadata, "retry_after_ms": r.retryIn.Milliseconds(), "message": r.message,
	})
}

var terminal = map[bridgev1.TransferState]bool{
	bridgev1.TransferState_TRANSFER_STATE_COMMITTED: true,
	bridgev1.TransferState_TRANSFER_STATE_ABORTED:   true,
	bridgev1.TransferState_TRANSFER_STATE_FAILED:    true,
}

func main() { os.Exit(run()) }

func run() int {
	var (
		networkFile = flag.String("network", "", "the bridge's network file (network.toml)")
		target      = flag.String("coordinator", "", "host:port of the coordinator")
		certFile    = flag.String("cert", "", "the brokerage's client certificate (PEM)")
		keyFile     = flag.String("key", "", "its private key (PEM)")
		instrKey    = flag.String("instruction-key", "", "the instruction key file (hex)")
		stateDir    = flag.String("state", "", "directory keeping each idempotency key's nonce and deadline")
		idemKey     = flag.String("idempotency-key", "", "unique per transfer request")
		security    = flag.String("security", "", "ISIN")
		from        = flag.String("from", "", "source ledger (the brokerage's own)")
		to          = flag.String("to", "", "target ledger")
		sender      = flag.String("sender", "", "holder address on the source ledger")
		recipient   = flag.String("recipient", "", "holder address on the target ledger")
		amount      = flag.String("amount", "", "units, a decimal integer")
		ttl         = flag.Duration("ttl", 50*time.Second, "deadline = first use + ttl (within the coordinator's transfer_ttl)")
		timeout     = flag.Duration("timeout", 3*time.Minute, "give up after this long")
	)
	flag.Parse()
	for name, v := range map[string]string{"network": *networkFile, "coordinator": *target, "cert": *certFile,
		"key": *keyFile, "instruction-key": *instrKey, "state": *stateDir, "idempotency-key": *idemKey,
		"security": *security, "from": *from, "to": *to, "sender": *sender, "recipient": *recipient, "amount": *amount} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "-%s is required\n", name)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	// 1. Dial with mTLS.
	var net network
	if _, err := toml.DecodeFile(*networkFile, &net); err != nil {
		return fail("network file", err)
	}
	roots, err := net.coordinatorRoots(filepath.Dir(*networkFile))
	if err != nil {
		return fail("network file", err)
	}
	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fail("client certificate", err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      roots,
		ServerName:   "coordinator.kstb-role", // the role the server's certificate must name
		MinVersion:   tls.VersionTLS13,
	})
	// Reconnect quickly after a coordinator restart or failover (gRPC's default backs off
	// up to 120 s); each call's own retries are below.
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		return fail("dial", err)
	}
	defer conn.Close()
	client := bridgev1.NewTransferServiceClient(conn)

	// 2. Build and sign the instruction.
	req, mine, err := instruct(net, *instrKey, *stateDir, *idemKey, *ttl, &bridgev1.SubmitTransferRequest{
		IdempotencyKey: *idemKey, SecurityId: *security, SourceLedger: *from, TargetLedger: *to,
		Sender: *sender, Recipient: *recipient, Amount: *amount,
	})
	if err != nil {
		return fail("instruction", err)
	}

	// 3. Submit, retrying only what is safe to retry.
	var resp *bridgev1.SubmitTransferResponse
	for attempt := 0; ; attempt++ {
		callCtx, callCancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err = client.SubmitTransfer(callCtx, req)
		callCancel()
		if err == nil {
			break
		}
		r := decode(err)
		if !r.retryable || ctx.Err() != nil {
			r.emit()
			return 2
		}
		wait := min(time.Duration(1<<min(attempt, 5))*200*time.Millisecond, 5*time.Second)
		wait = max(wait, r.retryIn)
		select {
		case <-ctx.Done():
			r.emit()
			return 2
		case <-time.After(wait):
		}
	}
	// 6. SECURITY: the answer must be the transfer signed, its id recomputed locally.
	if err := mine.check(resp.GetTransfer()); err != nil {
		return mismatch(err)
	}
	id := mine.transferID
	emit(map[string]any{"event": "submitted", "transfer_id": id, "created": resp.GetCreated(),
		"state": resp.GetTransfer().GetState().String()})

	// 4. Watch to a terminal state, resuming when the stream breaks.
	return watch(ctx, client, mine)
}

func mismatch(err error) int {
	emit(map[string]any{"event": "mismatch", "message": err.Error()})
	return 4
}

func instruct(net network, keyFile, stateDir, idemKey string, ttl time.Duration,
	req *bridgev1.SubmitTransferRequest) (*bridgev1.SubmitTransferRequest, signed, error) {
	key, err := kstb.LoadInstructionKey(keyFile)
	if err != nil {
		return nil, signed{}, err
	}
	src, err := net.ledger(req.SourceLedger)
	if err != nil {
		return nil, signed{}, err
	}
	dst, err := net.ledger(req.TargetLedger)
	if err != nil {
		return nil, signed{}, err
	}
	sec, err := kstb.SecurityWord(req.SecurityId)
	if err != nil {
		return nil, signed{}, err
	}
	senderAddr, err := kstb.ParseEVMAddress(req.Sender)
	if err != nil {
		return nil, signed{}, err
	}
	recipientAddr, err := kstb.ParseEVMAddress(req.Recipient)
	if err != nil {
		return nil, signed{}, err
	}
	units, ok := new(big.Int).SetString(req.Amount, 10)
	if !ok {
		return nil, signed{}, fmt.Errorf("amount %q is not a decimal integer", req.Amount)
	}
	c, err := choose(stateDir, idemKey, ttl)
	if err != nil {
		return nil, signed{}, err
	}
	var nonce kstb.Word
	if raw, err := hex.DecodeString(c.Nonce); err != nil || len(raw) != 32 {
		return nil, signed{}, errors.New("corrupt state file")
	} else {
		copy(nonce[:], raw)
	}
	addr := key.Address()
	terms := kstb.Terms{
		Nonce: nonce, Security: sec, Amount: units,
		SrcLedger: src.ledgerWord, SrcBridge: src.bridgeWord,
		DstLedger: dst.ledgerWord, DstBridge: dst.bridgeWord,
		Sender: kstb.AddressWord(senderAddr), Recipient: kstb.AddressWord(recipientAddr),
		Instructor: kstb.AddressWord(addr), Deadline: c.Deadline,
	}
	hash, err := terms.Hash()
	if err != nil {
		return nil, signed{}, err
	}
	req.Instruction = &bridgev1.Instruction{
		Nonce: nonce[:], Deadline: c.Deadline, Instructor: addr[:],
		Signature: key.Sign(kstb.InstructionDigest(src.networkWord, hash)),
	}
	return req, signedTransfer(terms, req), nil
}

func watch(ctx context.Context, client bridgev1.TransferServiceClient, mine signed) int {
	var seen uint64
	id := mine.transferID
	for {
		stream, err := client.WatchTransfer(ctx, &bridgev1.WatchTransferRequest{TransferId: id})
		for err == nil {
			var u *bridgev1.TransferUpdate
			u, err = stream.Recv()
			if err != nil {
				break
			}
			if u.GetSequence() <= seen {
				continue // a resumed watch replays from 1
			}
			// SECURITY: every update must be about the transfer signed, not another one.
			if err := mine.check(u.GetTransfer()); err != nil {
				return mismatch(err)
			}
			seen = u.GetSequence()
			emit(map[string]any{"event": "update", "sequence": u.GetSequence(),
				"state": u.GetState().String(), "detail": u.GetDetail()})
			if terminal[u.GetState()] {
				t := u.GetTransfer()
				emit(map[string]any{"event": "terminal", "transfer_id": id, "state": u.GetState().String(),
					"reason": t.GetReason(), "transactions": t.GetTransactions()})
				if u.GetState() == bridgev1.TransferState_TRANSFER_STATE_COMMITTED {
					return 0
				}
				return 3
			}
		}
		r := refusal{code: codes.OK, reason: "STREAM_ENDED", metadata: map[string]string{}}
		if !errors.Is(err, io.EOF) {
			r = decode(err)
			if ctx.Err() != nil || !r.retryable {
				r.emit()
				return 2
			}
		}
		// The stream ended or broke before a terminal state: resume after a short pause.
		select {
		case <-ctx.Done():
			r.emit()
			return 2
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func fail(what string, err error) int {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	return 1
}
