package fidelity

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cdr.dev/slog/v3"
	"github.com/coder/coder/v2/codersdk"
	"github.com/coder/coder/v2/codersdk/agentsdk"
)

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// wireRead is one read from the socket and when it arrived, from the request's start.
type wireRead struct {
	AtMs  int64  `json:"at_ms"`
	Bytes string `json:"bytes"`
}

// rawResult is /reinit as seen on the socket: what arrived, when, and in which framing.
type rawResult struct {
	Query string `json:"query"`
	// Outcome: "event" (a data event arrived), "http" (a complete non-200 answer),
	// "wait" (nothing but pings, or nothing at all, within the window), "ended" (a 200
	// stream ended without an event: its last chunk arrived, or the connection closed),
	// "error".
	Outcome string `json:"outcome"`
	Status  int    `json:"status,omitempty"`
	// Headers in the order received, as received (the driver normalises Date and the
	// per-request values before comparing).
	Headers [][2]string `json:"headers,omitempty"`
	// Framing of the body: "chunked", "content-length" or "close".
	Framing string `json:"framing,omitempty"`
	// Body decoded from its framing (an SSE stream up to the window's end).
	Body string `json:"body"`
	// FirstByteMs: when the first response byte arrived (-1: none).
	FirstByteMs int64 `json:"first_byte_ms"`
	// HeadMs: when the header block was complete (-1: never).
	HeadMs int64 `json:"head_ms"`
	// EndMs: when the stream ended (its last chunk, or the connection closed; -1: it did
	// not end within the window).
	EndMs int64      `json:"end_ms"`
	Reads []wireRead `json:"reads,omitempty"`
	Error string     `json:"error,omitempty"`
}

// rawReinit sends the agent's request as Go's HTTP client puts it on the wire (same
// request line, Host, User-Agent, the session token header, Accept-Encoding: gzip) and
// records every byte that comes back for up to window, or until a data event or a
// complete non-streaming answer arrived.
func rawReinit(ctx context.Context, base, token, query string, window time.Duration) rawResult {
	res := rawResult{Query: query, FirstByteMs: -1, HeadMs: -1, EndMs: -1}
	u := mustURL(base)
	start := time.Now()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		res.Outcome, res.Error = "error", err.Error()
		return res
	}
	defer conn.Close()
	target := "/api/v2/workspaceagents/me/reinit"
	if query != "" {
		target += "?" + query
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\nCoder-Session-Token: %s\r\nAccept-Encoding: gzip\r\n\r\n", target, u.Host, token)
	if _, err := conn.Write([]byte(req)); err != nil {
		res.Outcome, res.Error = "error", err.Error()
		return res
	}
	deadline := start.Add(window)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	var all []byte
	buf := make([]byte, 64*1024)
	// ended: the connection closed (EOF or reset), not the window's end.
	ended := false
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			at := time.Since(start).Milliseconds()
			if res.FirstByteMs < 0 {
				res.FirstByteMs = at
			}
			res.Reads = append(res.Reads, wireRead{AtMs: at, Bytes: string(buf[:n])})
			all = append(all, buf[:n]...)
			if res.HeadMs < 0 && bytes.Contains(all, []byte("\r\n\r\n")) {
				res.HeadMs = at
			}
			if done, _ := parseRaw(all, &res); done {
				if _, complete := res.complete(all); complete {
					res.EndMs = at
				}
				break
			}
		}
		if err != nil {
			var ne net.Error
			if !(errors.As(err, &ne) && ne.Timeout()) {
				ended = true
				res.EndMs = time.Since(start).Milliseconds()
			}
			break
		}
	}
	done, perr := parseRaw(all, &res)
	_, complete := res.complete(all)
	switch {
	case perr != nil:
		res.Outcome, res.Error = "error", perr.Error()
	case res.Status != 0 && res.Status != http.StatusOK && done:
		res.Outcome = "http"
	case strings.Contains(res.Body, "event: data\n"):
		res.Outcome = "event"
	case res.Status != 0 && res.Status != http.StatusOK:
		res.Outcome = "http"
	case ended, res.Status == http.StatusOK && complete:
		// A stream that ended cleanly (its last chunk arrived) or whose connection closed.
		res.Outcome = "ended"
	default:
		res.Outcome = "wait"
	}
	return res
}

// complete reports whether the response's body is complete in what arrived: its last
// chunk (chunked) or all of its Content-Length.
func (res *rawResult) complete(all []byte) (int, bool) {
	i := bytes.Index(all, []byte("\r\n\r\n"))
	if i < 0 {
		return 0, false
	}
	body := all[i+4:]
	switch res.Framing {
	case "chunked":
		_, complete := dechunk(body)
		return len(body), complete
	case "content-length":
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(all[:i+4])), nil)
		return len(body), err == nil && int64(len(body)) >= resp.ContentLength
	}
	return len(body), false
}

// parseRaw parses what arrived so far; done means nothing more is needed (a complete
// non-200 answer, or a data event).
func parseRaw(all []byte, res *rawResult) (bool, error) {
	i := bytes.Index(all, []byte("\r\n\r\n"))
	if i < 0 {
		return false, nil
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(all[:i+4])), nil)
	if err != nil {
		return false, err
	}
	res.Status = resp.StatusCode
	res.Headers = res.Headers[:0]
	lines := strings.Split(string(all[:i]), "\r\n")[1:]
	for _, l := range lines {
		name, value, _ := strings.Cut(l, ":")
		res.Headers = append(res.Headers, [2]string{name, strings.TrimSpace(value)})
	}
	body := all[i+4:]
	switch {
	case resp.TransferEncoding != nil && resp.TransferEncoding[0] == "chunked":
		res.Framing = "chunked"
		decoded, complete := dechunk(body)
		res.Body = string(decoded)
		if complete {
			return true, nil
		}
	case resp.ContentLength >= 0:
		res.Framing = "content-length"
		if int64(len(body)) >= resp.ContentLength {
			res.Body = string(body[:resp.ContentLength])
			return true, nil
		}
		res.Body = string(body)
		return false, nil
	default:
		res.Framing = "close"
		res.Body = string(body)
	}
	if res.Status == http.StatusOK && strings.Contains(res.Body, "event: data\n") {
		// Complete once the event's blank line arrived.
		j := strings.Index(res.Body, "event: data\n")
		return strings.Contains(res.Body[j:], "\n\n"), nil
	}
	return false, nil
}

// dechunk decodes chunked framing; complete means the last chunk arrived.
func dechunk(b []byte) ([]byte, bool) {
	var out []byte
	for {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return out, false
		}
		size, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(string(b[:i]), ";", 2)[0]), 16, 64)
		if err != nil {
			return out, false
		}
		if size == 0 {
			return out, true
		}
		if int64(len(b)) < int64(i)+2+size+2 {
			out = append(out, b[i+2:min(int64(len(b)), int64(i)+2+size)]...)
			return out, false
		}
		out = append(out, b[i+2:int64(i)+2+size]...)
		b = b[int64(i)+2+size+2:]
	}
}

// sdkResult is what the agent's own call, agentsdk.Client.WaitForReinit, returned.
type sdkResult struct {
	// Outcome: "event", "http" (a *codersdk.Error), "wait" (still waiting at the window's
	// end), "error" (any other error: the stream ended or broke).
	Outcome string                          `json:"outcome"`
	Event   *agentsdk.ReinitializationEvent `json:"event,omitempty"`
	Status  int                             `json:"status,omitempty"`
	Message string                          `json:"message,omitempty"`
	Detail  string                          `json:"detail,omitempty"`
	Error   string                          `json:"error,omitempty"`
	AtMs    int64                           `json:"at_ms"`
}

// sdkWait runs WaitForReinit for up to window.
func sdkWait(ctx context.Context, base, token string, window time.Duration) sdkResult {
	return sdkWaitUntil(ctx, base, token, window, nil)
}

// sdkWaitUntil runs WaitForReinit; after `before` (when not nil) has run, it waits up to
// window more. It lets a scenario act (claim, release a build) while the agent waits.
func sdkWaitUntil(ctx context.Context, base, token string, window time.Duration, before func()) sdkResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := agentsdk.New(mustURL(base), agentsdk.WithFixedToken(token))
	start := time.Now()
	type r struct {
		ev  *agentsdk.ReinitializationEvent
		err error
		at  time.Time
	}
	done := make(chan r, 1)
	go func() {
		ev, err := client.WaitForReinit(ctx)
		done <- r{ev, err, time.Now()}
	}()
	if before != nil {
		before()
	}
	var got r
	select {
	case got = <-done:
	case <-time.After(window):
		return sdkResult{Outcome: "wait", AtMs: time.Since(start).Milliseconds()}
	}
	// When the call returned, not when it was collected (after `before`).
	res := sdkResult{AtMs: got.at.Sub(start).Milliseconds()}
	var sdkErr *codersdk.Error
	switch {
	case got.err == nil:
		res.Outcome, res.Event = "event", got.ev
	case errors.As(got.err, &sdkErr):
		res.Outcome, res.Status, res.Message, res.Detail = "http", sdkErr.StatusCode(), sdkErr.Message, sdkErr.Detail
	default:
		res.Outcome, res.Error = "error", got.err.Error()
	}
	return res
}

// countingTransport counts the requests an SDK client sends to /reinit and records how
// each was answered.
type countingTransport struct {
	next     http.RoundTripper
	reinit   atomic.Int64
	mu       sync.Mutex
	attempts []attempt
}

// attempt is one /reinit request of an agent's loop and its answer.
type attempt struct {
	at time.Time
	// status is 0 when no HTTP answer came (err says why).
	status int
	err    string
	// guard: the answer's X-Coder-Reinit-Guard header (set on the guard's own 409).
	guard string
}

// answer names an attempt's answer for the results ("409", "502", "error").
func (a attempt) answer() string {
	if a.status == 0 {
		return "error"
	}
	return strconv.Itoa(a.status)
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/reinit") {
		return c.next.RoundTrip(r)
	}
	c.reinit.Add(1)
	resp, err := c.next.RoundTrip(r)
	a := attempt{at: time.Now()}
	if err != nil {
		a.err = err.Error()
	} else {
		a.status, a.guard = resp.StatusCode, resp.Header.Get("X-Coder-Reinit-Guard")
	}
	c.mu.Lock()
	c.attempts = append(c.attempts, a)
	c.mu.Unlock()
	return resp, err
}

// loopResult is what a real agent's reinit loop did for a while: the agent's code path
// (cli/agent.go of the same release) around agentsdk.WaitForReinitLoop.
type loopResult struct {
	// Requests: /reinit requests the loop sent.
	Requests int64 `json:"requests"`
	// Reinits: events the agent acted on (it shuts down and reinitializes on each).
	Reinits int `json:"reinits"`
	// Skipped: events the agent dropped as duplicates (same owner as the last one).
	Skipped int `json:"skipped"`
	// Closed: the loop closed its channel (a terminal 409) or was cancelled by the agent.
	Closed string `json:"closed"`
	// FirstEventMs: when the first event arrived (-1: none).
	FirstEventMs int64                           `json:"first_event_ms"`
	FirstEvent   *agentsdk.ReinitializationEvent `json:"first_event,omitempty"`
	Seconds      float64                         `json:"seconds"`
	// Answers: how the loop's /reinit requests were answered, by status ("error": none).
	Answers map[string]int `json:"answers,omitempty"`

	// attempts and firstEventAt: the same on the clock, for the coderd restart.
	attempts     []attempt
	firstEventAt time.Time
}

// agentLoop runs agentsdk.WaitForReinitLoop and consumes it as the 2.34/2.35 agent
// (cli/agent.go) does: the first event reinitializes; an event for the owner of the last
// one is a duplicate: the agent cancels the loop and keeps running; a closed channel
// (terminal 409) means running without reinit. It watches for `duration`; with
// keepWindow it keeps counting requests for the whole duration even after the loop ended,
// without it returns once the loop ended. `during` runs once the loop started.
func agentLoop(ctx context.Context, base, token string, duration time.Duration, keepWindow bool, during func()) loopResult {
	ct := &countingTransport{next: http.DefaultTransport}
	client := agentsdk.New(mustURL(base), agentsdk.WithFixedToken(token))
	client.SDK.HTTPClient = &http.Client{Transport: ct}
	loopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	events := agentsdk.WaitForReinitLoop(loopCtx, slog.Make(), client)
	if during != nil {
		go during()
	}
	res := loopResult{FirstEventMs: -1, Closed: "no"}
	var lastOwner [16]byte
	timer := time.NewTimer(duration)
	defer timer.Stop()
	for events != nil {
		select {
		case <-timer.C:
			events = nil
		case ev, ok := <-events:
			switch {
			case !ok:
				res.Closed = "channel closed (terminal 409)"
				events = nil
			case ev.OwnerID != [16]byte{} && ev.OwnerID == lastOwner:
				res.Skipped++
				res.Closed = "cancelled by the agent (duplicate event)"
				cancel()
				events = nil
			default:
				if res.FirstEventMs < 0 {
					res.firstEventAt = time.Now()
					res.FirstEventMs = res.firstEventAt.Sub(start).Milliseconds()
					e := ev
					res.FirstEvent = &e
				}
				lastOwner = ev.OwnerID
				res.Reinits++
			}
		}
	}
	// Keep the full window so requests after a stop would be counted.
	if rest := duration - time.Since(start); keepWindow && rest > 0 {
		select {
		case <-time.After(rest):
		case <-ctx.Done():
		}
	}
	cancel()
	res.Requests = ct.reinit.Load()
	res.Seconds = time.Since(start).Seconds()
	ct.mu.Lock()
	res.attempts = append([]attempt(nil), ct.attempts...)
	ct.mu.Unlock()
	res.Answers = map[string]int{}
	for _, a := range res.attempts {
		res.Answers[a.answer()]++
	}
	return res
}

// httpGet fetches a URL with a session token and returns status, headers (Date removed)
// and body.
func httpGet(ctx context.Context, target, token string) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	if token != "" {
		req.Header.Set(codersdk.SessionTokenHeader, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	resp.Header.Del("Date")
	return resp.StatusCode, resp.Header, body, err
}

func agentsdkClient(base, token string) *agentsdk.Client {
	return agentsdk.New(mustURL(base), agentsdk.WithFixedToken(token))
}
