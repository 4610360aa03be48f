//go:build !linux

package main

import "time"

// pacer waits until due times. Here it is time.Sleep, which can wake about
// 1 ms late; the summary's send lag line shows how late.
type pacer struct{}

func newPacer() *pacer { return &pacer{} }

func (p *pacer) wait(at time.Time) { time.Sleep(time.Until(at)) }

func (p *pacer) close() {}
