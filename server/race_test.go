//go:build race

package server_test

// raceEnabled: the race detector's shadow memory inflates RSS several
// times over, so RSS bounds hold only without it (the heap bound holds
// either way).
const raceEnabled = true
