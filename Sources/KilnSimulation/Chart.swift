import Foundation

/// Renders simulation reports as one self-contained SVG: a row per report (policy and fleet), each
/// with the queued jobs per tier over time (left), the p95 wait of dispatched jobs as a multiple of
/// the tier's promise on a log scale (middle), and the GPUs available and busy (right).
///
/// The output depends only on the reports: every number is printed with a fixed number of
/// decimals, so the same reports give the same bytes.
public enum SimulationChart {
    public static func svg(_ reports: [SimulationReport]) -> String {
        let height = rowHeight * Double(max(reports.count, 1))
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(num(width, 0))\" height=\"\(num(height, 0))\" "
        out += "viewBox=\"0 0 \(num(width, 0)) \(num(height, 0))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        out += "<rect x=\"0\" y=\"0\" width=\"\(num(width, 0))\" height=\"\(num(height, 0))\" fill=\"#ffffff\"/>\n"
        if reports.isEmpty {
            out += text("no simulation reports", x: width / 2, y: rowHeight / 2, anchor: "middle", size: 13)
        }
        for (index, report) in reports.enumerated() {
            out += row(report, top: Double(index) * rowHeight)
        }
        out += "</svg>\n"
        return out
    }

    // MARK: Layout

    private static let width = 1650.0
    private static let rowHeight = 320.0
    private static let marginLeft = 62.0
    private static let marginRight = 22.0
    private static let marginTop = 36.0
    private static let marginBottom = 64.0
    /// Eight distinct colours, assigned by tier index.
    private static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    /// The wait multiples the right panel shows, as powers of ten.
    private static let logLow = -2.0
    private static let logHigh = 3.0

    private struct Point {
        var x: Double
        var y: Double
    }

    /// A plot area in pixels.
    private struct Frame {
        var x: Double
        var y: Double
        var width: Double
        var height: Double
        var right: Double { x + width }
        var bottom: Double { y + height }
    }

    private static func colour(_ tier: Int) -> String { palette[tier % palette.count] }

    private static func row(_ report: SimulationReport, top: Double) -> String {
        let panelWidth = width / 3
        func frame(_ panel: Int) -> Frame {
            Frame(
                x: Double(panel) * panelWidth + marginLeft, y: top + marginTop,
                width: panelWidth - marginLeft - marginRight, height: rowHeight - marginTop - marginBottom)
        }
        let time = TimeAxis(report)
        var out = "<g>\n"
        if top > 0 {
            out += "<line x1=\"0\" y1=\"\(num(top))\" x2=\"\(num(width))\" y2=\"\(num(top))\" stroke=\"#cccccc\"/>\n"
        }
        out += queuePanel(report, frame: frame(0), time: time)
        out += waitPanel(report, frame: frame(1), time: time)
        out += fleetPanel(report, frame: frame(2), time: time)
        out += legend(report, x: marginLeft, y: top + rowHeight - 14)
        out += "</g>\n"
        return out
    }

    // MARK: Panels

    /// Queued jobs per tier over time, one line per tier.
    private static func queuePanel(_ report: SimulationReport, frame: Frame, time: TimeAxis) -> String {
        let highest = report.series.flatMap(\.queued).max() ?? 0
        let ticks = countTicks(upTo: Double(highest))
        let y = linear(from: (0, ticks.last ?? 1), to: (frame.bottom, frame.y))
        let x = time.scale(frame.x, frame.right)
        var out = title("\(report.policy), \(report.fleet) fleet: queued jobs per tier (\(report.scenario))", frame: frame)
        out += axes(
            frame: frame, xTicks: time.ticks().map { (x($0.hours), $0.label) },
            yTicks: ticks.map { (y($0), num($0, 0)) }, xLabel: time.axisLabel, yLabel: "queued jobs")
        for tier in report.tiers.indices {
            let points = report.series.map { sample -> Point? in
                guard tier < sample.queued.count else { return nil }
                return Point(x: x(sample.hours), y: y(Double(sample.queued[tier])))
            }
            out += lines(points, colour: colour(tier))
        }
        if report.series.isEmpty { out += noData(frame) }
        return out
    }

    /// Each sample interval's p95 wait (`Sample.waitP95`) as a multiple of the tier's promise, on a
    /// log axis; intervals without a value break the line.
    private static func waitPanel(_ report: SimulationReport, frame: Frame, time: TimeAxis) -> String {
        let y = linear(from: (logLow, logHigh), to: (frame.bottom, frame.y))
        let x = time.scale(frame.x, frame.right)
        let exponents = Int(logLow)...Int(logHigh)
        let yTicks = exponents.map { exponent -> (Double, String) in
            let value = pow(10, Double(exponent))
            return (y(Double(exponent)), trimmed(value, decimals: 2) + "×")
        }
        var out = title("\(report.policy), \(report.fleet) fleet: p95 wait / promise, per sample interval", frame: frame)
        out += axes(
            frame: frame, xTicks: time.ticks().map { (x($0.hours), $0.label) }, yTicks: yTicks, xLabel: time.axisLabel,
            yLabel: "p95 wait ÷ promise (log)")
        let promiseY = y(0)
        out += "<line x1=\"\(num(frame.x))\" y1=\"\(num(promiseY))\" x2=\"\(num(frame.right))\" y2=\"\(num(promiseY))\" "
        out += "stroke=\"#555555\" stroke-width=\"1\" stroke-dasharray=\"6 4\"/>\n"
        out += text("promise", x: frame.right - 4, y: promiseY - 4, anchor: "end", fill: "#555555")
        for (tier, spec) in report.tiers.enumerated() {
            let points = report.series.map { sample -> Point? in
                guard tier < sample.waitP95.count, let wait = sample.waitP95[tier],
                    let exponent = logMultiple(wait, promise: spec.maxWaitSeconds)
                else { return nil }
                return Point(x: x(sample.hours), y: y(exponent))
            }
            out += lines(points, colour: colour(tier))
        }
        if report.series.isEmpty { out += noData(frame) }
        return out
    }

    /// GPUs available (workers that have arrived and are not down) and busy, at each sample.
    private static func fleetPanel(_ report: SimulationReport, frame: Frame, time: TimeAxis) -> String {
        let highest = report.series.map(\.availableGPUs).max() ?? 0
        let ticks = countTicks(upTo: Double(highest))
        let y = linear(from: (0, ticks.last ?? 1), to: (frame.bottom, frame.y))
        let x = time.scale(frame.x, frame.right)
        var out = title("\(report.policy), \(report.fleet) fleet: GPUs available (grey) and busy (black)", frame: frame)
        out += axes(
            frame: frame, xTicks: time.ticks().map { (x($0.hours), $0.label) },
            yTicks: ticks.map { (y($0), num($0, 0)) }, xLabel: time.axisLabel, yLabel: "GPUs")
        out += lines(report.series.map { Point(x: x($0.hours), y: y(Double($0.availableGPUs))) }, colour: "#999999")
        out += lines(report.series.map { Point(x: x($0.hours), y: y(Double($0.busyGPUs))) }, colour: "#000000")
        if report.series.isEmpty { out += noData(frame) }
        return out
    }

    /// log10 of `wait / promise`, clamped to the panel's range; nil where it is undefined.
    private static func logMultiple(_ wait: Double, promise: Double) -> Double? {
        guard wait.isFinite, promise.isFinite, promise > 0 else { return nil }
        let multiple = max(wait / promise, pow(10, logLow))
        return min(max(log10(multiple), logLow), logHigh)
    }

    private static func legend(_ report: SimulationReport, x: Double, y: Double) -> String {
        var out = ""
        var cursor = x
        for (tier, spec) in report.tiers.enumerated() {
            let label = "\(spec.name) (\(trimmed(spec.maxWaitSeconds, decimals: 1)) s)"
            out += "<line x1=\"\(num(cursor))\" y1=\"\(num(y - 4))\" x2=\"\(num(cursor + 18))\" y2=\"\(num(y - 4))\" "
            out += "stroke=\"\(colour(tier))\" stroke-width=\"3\"/>\n"
            out += text(label, x: cursor + 23, y: y)
            cursor += 23 + 6.5 * Double(label.count) + 18
        }
        return out
    }

    private static func noData(_ frame: Frame) -> String {
        text("no samples", x: frame.x + frame.width / 2, y: frame.y + frame.height / 2, anchor: "middle", fill: "#888888")
    }

    // MARK: Building blocks

    /// One polyline per run of consecutive points; a nil point breaks the line, and a run of one
    /// point is drawn as a dot.
    private static func lines(_ points: [Point?], colour: String) -> String {
        var runs: [[Point]] = [[]]
        for point in points {
            if let point {
                runs[runs.count - 1].append(point)
            } else if !(runs.last?.isEmpty ?? true) {
                runs.append([])
            }
        }
        var out = ""
        for run in runs where !run.isEmpty {
            if run.count == 1 {
                out += "<circle cx=\"\(num(run[0].x))\" cy=\"\(num(run[0].y))\" r=\"2\" fill=\"\(colour)\"/>\n"
            } else {
                let coordinates = run.map { "\(num($0.x)),\(num($0.y))" }.joined(separator: " ")
                out += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.5\" stroke-linejoin=\"round\" "
                out += "points=\"\(coordinates)\"/>\n"
            }
        }
        return out
    }

    /// The panel's border, grid lines and tick labels; tick positions are in pixels.
    private static func axes(
        frame: Frame, xTicks: [(Double, String)], yTicks: [(Double, String)], xLabel: String, yLabel: String
    ) -> String {
        var out = ""
        for (position, label) in yTicks {
            out += "<line x1=\"\(num(frame.x))\" y1=\"\(num(position))\" x2=\"\(num(frame.right))\" y2=\"\(num(position))\" "
            out += "stroke=\"#eeeeee\"/>\n"
            out += text(label, x: frame.x - 6, y: position + 4, anchor: "end")
        }
        for (position, label) in xTicks {
            out += "<line x1=\"\(num(position))\" y1=\"\(num(frame.bottom))\" x2=\"\(num(position))\" "
            out += "y2=\"\(num(frame.bottom + 4))\" stroke=\"#333333\"/>\n"
            out += text(label, x: position, y: frame.bottom + 16, anchor: "middle")
        }
        out += "<rect x=\"\(num(frame.x))\" y=\"\(num(frame.y))\" width=\"\(num(frame.width))\" height=\"\(num(frame.height))\" "
        out += "fill=\"none\" stroke=\"#333333\"/>\n"
        out += text(xLabel, x: frame.x + frame.width / 2, y: frame.bottom + 32, anchor: "middle", fill: "#555555")
        let labelX = frame.x - 46
        let labelY = frame.y + frame.height / 2
        out += "<text x=\"0\" y=\"0\" text-anchor=\"middle\" fill=\"#555555\" "
        out += "transform=\"translate(\(num(labelX)),\(num(labelY))) rotate(-90)\">\(escape(yLabel))</text>\n"
        return out
    }

    private static func title(_ title: String, frame: Frame) -> String {
        text(title, x: frame.x, y: frame.y - 12, size: 13, weight: "bold")
    }

    private static func text(
        _ content: String, x: Double, y: Double, anchor: String = "start", size: Double = 11, weight: String = "normal",
        fill: String = "#222222"
    ) -> String {
        "<text x=\"\(num(x))\" y=\"\(num(y))\" text-anchor=\"\(anchor)\" font-size=\"\(num(size, 0))\" "
            + "font-weight=\"\(weight)\" fill=\"\(fill)\">\(escape(content))</text>\n"
    }

    // MARK: Scales and numbers

    /// Maps `domain` linearly onto `range`; a domain of zero width maps everything to the range's start.
    private static func linear(from domain: (Double, Double), to range: (Double, Double)) -> (Double) -> Double {
        let span = domain.1 - domain.0
        return { value in
            guard span.isFinite, span != 0, value.isFinite else { return range.0 }
            return range.0 + (value - domain.0) / span * (range.1 - range.0)
        }
    }

    /// Ticks from 0 on a 1-2-5 step (at least 1, counts being whole) covering `value`.
    private static func countTicks(upTo value: Double) -> [Double] {
        guard value.isFinite, value > 0 else { return [0, 1] }
        let rough = value / 5
        let magnitude = pow(10, floor(log10(rough)))
        let nice = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= rough } ?? 10 * magnitude
        let step = max(nice, 1)
        let count = max(1, Int((value / step).rounded(.up)))
        return (0...count).map { Double($0) * step }
    }

    /// A number with a fixed count of decimals, never NaN or "-0".
    private static func num(_ value: Double, _ decimals: Int = 1) -> String {
        guard value.isFinite else { return "0" }
        let text = String(format: "%.\(decimals)f", value)
        return Double(text) == 0 ? String(format: "%.\(decimals)f", 0.0) : text
    }

    /// A number with at most `decimals` decimals and no trailing zeros (`0.25`, `2`, `1000`).
    private static func trimmed(_ value: Double, decimals: Int) -> String {
        var text = num(value, decimals)
        guard text.contains(".") else { return text }
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }

    /// Escapes text for XML content and attributes, dropping characters XML does not allow.
    private static func escape(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            default:
                let value = scalar.value
                if value < 0x20 || value == 0xFFFE || value == 0xFFFF { continue }
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    // MARK: Time axis

    /// Hours from the start of the run, labelled as clock times when the scenario names the clock
    /// time of hour 0, otherwise as `h+N`.
    private struct TimeAxis {
        let end: Double
        let startMinutes: Int?

        init(_ report: SimulationReport) {
            let last = report.series.last?.hours ?? 0
            let end = max(report.durationHours.isFinite ? report.durationHours : 0, last.isFinite ? last : 0)
            // Bounded so that tick arithmetic stays finite for any decoded report.
            self.end = end > 0 ? min(end, 1_000_000) : 1
            startMinutes = report.startClock.flatMap(Self.minutes(ofClock:))
        }

        var axisLabel: String { startMinutes == nil ? "hours from start" : "time of day" }

        /// Maps hours onto the pixels from `left` to `right`.
        func scale(_ left: Double, _ right: Double) -> (Double) -> Double {
            SimulationChart.linear(from: (0, end), to: (left, right))
        }

        /// Ticks on a round step in hours, at most about ten of them.
        func ticks() -> [(hours: Double, label: String)] {
            let steps = [0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 24, 48, 72, 168]
            let step = steps.first { end / $0 <= 10 } ?? (end / 10 / 168).rounded(.up) * 168
            let count = Int((end / step + 1e-9).rounded(.down))
            return (0...max(count, 0)).map { index in
                let hours = Double(index) * step
                return (hours: hours, label: label(hours))
            }
        }

        private func label(_ hours: Double) -> String {
            guard let startMinutes else { return "h+" + SimulationChart.trimmed(hours, decimals: 2) }
            let total = startMinutes + Int((hours * 60).rounded())
            let day = total / (24 * 60)
            let minutes = total % (24 * 60)
            let clock = Self.twoDigits(minutes / 60) + ":" + Self.twoDigits(minutes % 60)
            return day > 0 ? "\(clock) +\(day)d" : clock
        }

        private static func twoDigits(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }

        /// Minutes after midnight of `"HH:MM"` (or `"HH:MM:SS"`); nil if it is not a clock time.
        static func minutes(ofClock clock: String) -> Int? {
            let parts = clock.trimmingCharacters(in: .whitespaces).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 || parts.count == 3, let hour = Int(parts[0]), let minute = Int(parts[1]),
                (0..<24).contains(hour), (0..<60).contains(minute)
            else { return nil }
            return hour * 60 + minute
        }
    }
}
