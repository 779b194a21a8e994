# Plots of one benchmark run, written as PNG files next to its data.
#
#   gnuplot -e "dir = 'bench/results/<timestamp>'" -e "hist_max = 40" bench/plots.gp
#
# dir is the results directory of bench/run. hist_max is the right edge of
# the latency histogram in ms; bench/run passes the insert-to-push p99,
# so the histogram leaves out the slowest 1% and the CDF shows them.

set terminal pngcairo size 1000,560 noenhanced
set grid
set key top right

# Latency histogram: share of pushes per bin of hist_max / 80 ms.
stats dir.'/latency-pair.dat' using 1 nooutput
pair_count = STATS_records
stats dir.'/latency-insert.dat' using 1 nooutput
insert_count = STATS_records
bin_width = hist_max / 80.0
bin(x) = bin_width * (floor(x / bin_width) + 0.5)

set output dir.'/latency-histogram.png'
set title 'Latency at a fixed insert rate: share of match pushes per bin'
set xlabel 'ms from created_at to arrival at the push receiver'
set ylabel 'share of pushes'
set xrange [0:hist_max]
set yrange [0:*]
plot dir.'/latency-pair.dat' using (bin($1)):(1.0 / pair_count) smooth frequency \
		with steps lw 2 title 'pair to push (later intent of the pair)', \
	dir.'/latency-insert.dat' using (bin($1)):(1.0 / insert_count) smooth frequency \
		with steps lw 2 title 'insert to push (each intent)'

# Latency CDF over the whole range, on a log scale.
set output dir.'/latency-cdf.png'
set title 'Latency at a fixed insert rate: cumulative share of match pushes'
set ylabel 'share of pushes at or below'
set logscale x
set xrange [*:*]
set yrange [0:1]
set key bottom right
plot dir.'/latency-pair.dat' using 1:2 with lines lw 2 title 'pair to push', \
	dir.'/latency-insert.dat' using 1:2 with lines lw 2 title 'insert to push'
unset logscale x

# Pair to push latency over the phase, one point a push, on a log scale:
# a stall shows as a column of points.
set output dir.'/latency-time.png'
set title 'Latency at a fixed insert rate: pair to push by the time of the pair'
set xlabel 'seconds since the first insert'
set ylabel 'ms from the later created_at to arrival'
set logscale y
set xrange [*:*]
set yrange [0.1:*]
set key top right
plot dir.'/latency-pair-time.dat' using 1:($2 > 0.1 ? $2 : 0.1) with points pt 7 ps 0.3 title 'pair to push'
unset logscale y

# R2: the worker's output per second while it works through the backlog.
set key below
set xlabel 'seconds since the worker turned to the backlog'
set ylabel 'per second'
set yrange [0:*]
set output dir.'/throughput-r2.png'
set title 'R2: a backlog of waiting intents, fast providers'
plot dir.'/r2-per-second.dat' using 1:3 with lines lw 2 title 'match pushes received/s', \
	'' using 1:4 with lines lw 1 title 'matches ready/s'

# Throughput per second under unthrottled inserts. The worker's output has
# its own axis on the right, so that it stays readable when it is far below
# the insert rate.
set xlabel 'seconds since the first insert'
set ylabel 'inserts per second'
set y2label "worker's output per second"
set y2range [0:*]
set ytics nomirror
set y2tics

set output dir.'/throughput-r2-inserts.png'
set title 'R2 with concurrent inserts: unthrottled inserts, fast providers'
plot dir.'/r2-inserts-per-second.dat' using 1:2 with lines lw 2 title 'inserts/s (left)', \
	'' using 1:3 axes x1y2 with lines lw 2 title 'match pushes received/s (right)', \
	'' using 1:4 axes x1y2 with lines lw 1 title 'matches ready/s (right)'

set output dir.'/throughput-slow.png'
set title 'Slow providers: unthrottled inserts, delayed rooms and pushes'
plot dir.'/slow-per-second.dat' using 1:2 with lines lw 2 title 'inserts/s (left)', \
	'' using 1:3 axes x1y2 with lines lw 2 title 'match pushes received/s (right)', \
	'' using 1:4 axes x1y2 with lines lw 1 title 'matches ready/s (right)'

unset y2label
unset y2tics
set ytics mirror

# Worker memory over the memory phase.
set output dir.'/memory.png'
set title 'Worker memory while intents are matched and pushed'
set xlabel 'intents paired'
set ylabel 'MB'
set format x '%.0s%c'
set key inside center right
plot dir.'/memory.dat' using 2:($3 / 1024) with linespoints lw 2 title 'VmRSS', \
	'' using 2:($4 / 1024) with linespoints lw 2 title 'RssAnon'
