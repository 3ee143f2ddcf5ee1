// Command herald-chat is a terminal chat client for Herald, built on the centrifuge-go SDK.
//
// It joins a room (the channel chat:<room>), publishes every line typed on stdin as
// {"nick": ..., "text": ...}, and prints the messages of others with their author and time,
// who joins and leaves, and the state of the connection. See README.md.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/centrifugal/centrifuge-go"
)

// message is what this client publishes, and what it looks for in what it receives.
type message struct {
	Nick string `json:"nick"`
	Text string `json:"text"`
}

func main() {
	url := flag.String("url", env("HERALD_URL", "ws://127.0.0.1:8000/connection/websocket"), "Herald WebSocket endpoint (env HERALD_URL)")
	token := flag.String("token", os.Getenv("HERALD_TOKEN"), "connection token (JWT), e.g. from: herald gentoken --user NAME (env HERALD_TOKEN)")
	room := flag.String("room", env("HERALD_ROOM", "lobby"), "room to join: the channel chat:ROOM (a name with ':' is used as the channel) (env HERALD_ROOM)")
	nick := flag.String("nick", env("USER", "gopher"), "nickname shown to others")
	exitAfter := flag.Int("exit-after", 0, "exit (status 0) after receiving N messages from others; 0: run until end of input or Ctrl-C")
	flag.Parse()

	channel := *room
	if !strings.Contains(channel, ":") {
		channel = "chat:" + channel
	}

	client := centrifuge.NewJsonClient(*url, centrifuge.Config{Token: *token})

	var myClientID atomic.Value // this connection's client ID, to skip our own messages
	myClientID.Store("")
	client.OnConnecting(func(e centrifuge.ConnectingEvent) { say("* connecting (%s)", e.Reason) })
	client.OnConnected(func(e centrifuge.ConnectedEvent) {
		myClientID.Store(e.ClientID)
		say("* connected to %s", *url)
	})
	// The SDK reconnects by itself after network errors (OnConnecting again); OnDisconnected means it gave up,
	// for example on an invalid token.
	client.OnDisconnected(func(e centrifuge.DisconnectedEvent) {
		say("* disconnected: %d %s", e.Code, e.Reason)
		quit(1)
	})
	client.OnError(func(e centrifuge.ErrorEvent) { say("! %v", e.Error) })

	sub, err := client.NewSubscription(channel, centrifuge.SubscriptionConfig{Recoverable: true, JoinLeave: true})
	if err != nil {
		fail("%v", err)
	}
	received := 0 // only touched by the SDK's event goroutine
	sub.OnSubscribing(func(e centrifuge.SubscribingEvent) { say("* joining %s (%s)", channel, e.Reason) })
	sub.OnSubscribed(func(e centrifuge.SubscribedEvent) {
		note := ""
		if e.WasRecovering && e.Recovered {
			note = ", missed messages recovered"
		}
		say("* joined %s as %s%s", channel, *nick, note)
		go showOnline(sub)
	})
	sub.OnUnsubscribed(func(e centrifuge.UnsubscribedEvent) { // e.g. permission denied
		say("* left %s: %d %s", channel, e.Code, e.Reason)
		quit(1)
	})
	sub.OnError(func(e centrifuge.SubscriptionErrorEvent) { say("! %s: %v", channel, e.Error) })
	isMe := func(info *centrifuge.ClientInfo) bool {
		return info != nil && info.Client == myClientID.Load().(string)
	}
	sub.OnJoin(func(e centrifuge.JoinEvent) {
		if !isMe(&e.ClientInfo) {
			say("* %s joined", e.User)
		}
	})
	sub.OnLeave(func(e centrifuge.LeaveEvent) {
		if !isMe(&e.ClientInfo) {
			say("* %s left", e.User)
		}
	})
	sub.OnPublication(func(e centrifuge.PublicationEvent) {
		if isMe(e.Info) {
			return // our own line, already on the screen
		}
		author, text := "server", string(e.Data)
		if e.Info != nil && e.Info.User != "" {
			author = e.Info.User
		}
		var m message
		if json.Unmarshal(e.Data, &m) == nil && m.Text != "" {
			text = m.Text
			if m.Nick != "" {
				author = m.Nick
			}
		}
		say("<%s> %s", author, text)
		received++
		if received == *exitAfter {
			quit(0)
		}
	})

	if err := sub.Subscribe(); err != nil {
		fail("subscribe: %v", err)
	}
	if err := client.Connect(); err != nil {
		fail("connect: %v", err)
	}

	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			text := strings.TrimSpace(lines.Text())
			if text == "" {
				continue
			}
			data, _ := json.Marshal(message{Nick: *nick, Text: text})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := sub.Publish(ctx, data); err != nil {
				say("! not sent: %v", err)
			}
			cancel()
		}
		if *exitAfter == 0 {
			quit(0) // end of input; with --exit-after, keep running until enough messages came
		}
	}()

	interrupt := make(chan os.Signal, 1)
	signal.Notify(interrupt, os.Interrupt)
	status := 0
	select {
	case status = <-exitStatus:
	case <-interrupt:
	}
	quitting.Store(true)
	client.Close()
	os.Exit(status)
}

// quitting silences the events of our own disconnect.
var quitting atomic.Bool

// exitStatus receives the first status passed to quit; main then closes the client and exits with it.
var exitStatus = make(chan int, 1)

func quit(status int) {
	select {
	case exitStatus <- status:
	default: // already quitting
	}
}

// showOnline prints who is in the room (the channel's presence), when the server allows it.
func showOnline(sub *centrifuge.Subscription) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	presence, err := sub.Presence(ctx)
	if err != nil {
		return
	}
	seen := map[string]bool{}
	var users []string
	for _, c := range presence.Clients {
		if !seen[c.User] {
			seen[c.User] = true
			users = append(users, c.User)
		}
	}
	sort.Strings(users)
	say("* online: %s", strings.Join(users, ", "))
}

// say prints one line, prefixed with the local time.
func say(format string, args ...any) {
	if quitting.Load() {
		return
	}
	fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "herald-chat: "+format+"\n", args...)
	os.Exit(1)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
