package sim

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot writes the run's plots to dir (created if missing) as PNG files and
// returns their paths: the staleness age distribution of stale reads, the
// latency of reads per answering tier, and source reads over time with the
// fault windows marked.
func (r *Result) Plot(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sim: report: %w", err)
	}
	plots := []struct {
		name string
		draw func() (*plot.Plot, error)
	}{
		{"staleness.png", r.plotStaleness},
		{"latency.png", r.plotLatency},
		{"source_reads.png", r.plotSourceReads},
	}
	var files []string
	for _, p := range plots {
		pl, err := p.draw()
		if err != nil {
			return files, fmt.Errorf("sim: report %s: %w", p.name, err)
		}
		path := filepath.Join(dir, p.name)
		if err := pl.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return files, fmt.Errorf("sim: report %s: %w", p.name, err)
		}
		files = append(files, path)
	}
	return files, nil
}

// plotStaleness is a histogram of the ages of stale reads that were not
// permitted-stale, with the bound marked.
func (r *Result) plotStaleness() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Staleness age of stale reads (%d of %d reads; %d violations)", len(r.ages), r.Total.Reads, r.Violations())
	p.X.Label.Text = "age: read start minus return of the first newer write (ms)"
	p.Y.Label.Text = "reads"
	bound := float64(r.Bound) / 1e6
	if len(r.ages) > 0 {
		vs := make(plotter.Values, len(r.ages))
		for i, a := range r.ages {
			vs[i] = float64(a) / 1e6
		}
		h, err := plotter.NewHist(vs, 50)
		if err != nil {
			return nil, err
		}
		h.FillColor = plotutil.Color(0)
		p.Add(h)
	} else {
		p.Title.Text += ": none"
	}
	top := math.Max(p.Y.Max, 1)
	l, err := plotter.NewLine(plotter.XYs{{X: bound, Y: 0}, {X: bound, Y: top}})
	if err != nil {
		return nil, err
	}
	l.Color = color.RGBA{R: 200, A: 255}
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(l)
	p.Legend.Add(fmt.Sprintf("bound %v (LeaseTTL + slack)", r.Bound), l)
	p.Legend.Top = true
	p.X.Min = 0
	p.X.Max = math.Max(p.X.Max, bound*1.1)
	return p, nil
}

// plotLatency draws, per answering tier, the fraction of reads answered
// within each latency (a CDF on a log axis).
func (r *Result) plotLatency() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Read latency per answering tier"
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of the tier's reads within"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	for i, t := range r.Tiers {
		if len(t.lat) == 0 {
			continue
		}
		const points = 200
		xys := make(plotter.XYs, 0, points+1)
		for j := 0; j <= points; j++ {
			q := float64(j) / points
			us := math.Max(float64(quantile(t.lat, q))/1e3, 0.01)
			xys = append(xys, plotter.XY{X: us, Y: q})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s: %d reads, p50 %s, p99 %s", t.Tier, t.Reads, dur(t.P50), dur(t.P99)), l)
	}
	return p, nil
}

// plotSourceReads draws source reads (fetches) per 100ms over the run,
// with each fault window shaded.
func (r *Result) plotSourceReads() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Source reads over time (%d in all, %.2f per key write)", r.SourceReads, r.HerdFactor)
	p.X.Label.Text = "time since the run began (s)"
	p.Y.Label.Text = "source reads per 100ms"
	const bucket = 100 * time.Millisecond
	n := int(r.fetchSpan/int64(bucket)) + 1
	counts := make([]float64, n)
	for _, t := range r.fetches {
		if i := int(t / int64(bucket)); i >= 0 && i < n {
			counts[i]++
		}
	}
	xys := make(plotter.XYs, n)
	for i, c := range counts {
		xys[i] = plotter.XY{X: (float64(i) + 0.5) * bucket.Seconds(), Y: c}
	}
	top := math.Max(slices.Max(counts), 1) * 1.05
	for i, f := range r.Faults {
		if f.Skipped != "" {
			continue
		}
		end := f.End
		if end < f.Start+bucket/4 {
			end = f.Start + bucket/4 // keep an instant fault visible
		}
		x0, x1 := f.Start.Seconds(), end.Seconds()
		poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: 0}, {X: x1, Y: 0}, {X: x1, Y: top}, {X: x0, Y: top}})
		if err != nil {
			return nil, err
		}
		c := plotutil.Color(i + 1).(color.RGBA)
		c.A = 70
		c.R, c.G, c.B = uint8(uint16(c.R)*70/255), uint8(uint16(c.G)*70/255), uint8(uint16(c.B)*70/255) // premultiplied
		poly.Color = c
		poly.LineStyle.Width = 0
		p.Add(poly)
		label := string(f.Kind)
		if f.Kind == Partition || f.Kind == RedisLatency {
			label += fmt.Sprintf(" (node %d)", f.Node)
		}
		p.Legend.Add(label, poly)
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return nil, err
	}
	l.Color = color.Black
	l.Width = vg.Points(1)
	p.Add(l)
	p.Legend.Add("source reads", l)
	p.Legend.Top = true
	p.Y.Min, p.Y.Max = 0, top
	return p, nil
}
