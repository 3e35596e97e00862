# bench/plot.gp - chart of bench/run's HTTP medians, called by bench/run:
#   gnuplot -e "datafile='plot.dat'; outfile='latest.png'; be_a='epoll'; \
#               be_b='io_uring'; depth=16; subtitle='...'" bench/plot.gp
# datafile holds two blocks (index 0: no pipelining, index 1: pipelined),
# each with lines "conns cpu_a cpu_b rps_a rps_b".
# Top row: server CPU per request (what the backends differ in); bottom row:
# requests/s (on 2 cores, mostly what wrk manages).

if (!exists("datafile")) datafile = 'plot.dat'
if (!exists("outfile")) outfile = 'latest.png'
if (!exists("be_a")) be_a = 'epoll'
if (!exists("be_b")) be_b = 'io_uring'
if (!exists("depth")) depth = 16
if (!exists("subtitle")) subtitle = ''

if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
    set terminal pngcairo noenhanced size 1200,860 font "Sans,10"
} else {
    set terminal png noenhanced size 1200,860
}
set output outfile
set datafile missing "NaN"

set logscale x 2
set xtics ("2" 2, "16" 16, "64" 64, "512" 512)
set xrange [1.5:700]
set grid ytics xtics lc rgb "#dddddd"
set key top left
set yrange [0:*]
set format y "%g"
set style line 1 lc rgb "#1f77b4" lw 2 pt 7 ps 1.2
set style line 2 lc rgb "#d62728" lw 2 pt 5 ps 1.2

set multiplot layout 2,2 title sprintf("goev %s vs %s, HTTP plaintext, 1 poller (medians)\n%s", be_a, be_b, subtitle)

set key top right
set title "server CPU per request, no pipelining"
set ylabel "CPU us/request"
set xlabel "connections"
plot datafile index 0 using 1:2 with linespoints ls 1 title be_a, \
     ''       index 0 using 1:3 with linespoints ls 2 title be_b

set title sprintf("server CPU per request, %d-deep pipelining", depth)
plot datafile index 1 using 1:2 with linespoints ls 1 title be_a, \
     ''       index 1 using 1:3 with linespoints ls 2 title be_b

set key top left
set title "requests/s, no pipelining"
set ylabel "requests/s"
set format y "%.1s%c"
plot datafile index 0 using 1:4 with linespoints ls 1 title be_a, \
     ''       index 0 using 1:5 with linespoints ls 2 title be_b

set title sprintf("requests/s, %d-deep pipelining", depth)
plot datafile index 1 using 1:4 with linespoints ls 1 title be_a, \
     ''       index 1 using 1:5 with linespoints ls 2 title be_b

unset multiplot
