#include "services/common/metrics.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "tests/support/process.h"

namespace ragserve {
namespace {

// Prometheus' own checker: the exposition text must be accepted as is.
void ExpectPromtoolAccepts(const std::string& text) {
  const std::string dir = testing::MakeTempDir("metrics");
  const std::string path = dir + "/metrics.txt";
  std::ofstream(path) << text;
  std::string out;
  const int rc = testing::RunCommand("promtool check metrics < " + path, &out);
  EXPECT_EQ(rc, 0) << out << "\n--- input ---\n" << text;
}

TEST(MetricsTest, CounterGaugeHistogramRenderInTextFormat) {
  MetricsRegistry reg;
  reg.GetCounter("rs_test_requests_total", "Requests seen.", {{"method", "Search"}}).Inc();
  reg.GetCounter("rs_test_requests_total", "Requests seen.", {{"method", "Search"}}).Inc(2);
  reg.GetCounter("rs_test_requests_total", "Requests seen.", {{"method", "Upsert"}}).Inc();
  reg.GetGauge("rs_test_bytes", "Bytes held.").Set(42.5);
  auto& h = reg.GetHistogram("rs_test_latency_seconds", "Latency.", {0.1, 1.0}, {{"op", "get"}});
  h.Observe(0.05);
  h.Observe(0.5);
  h.Observe(5.0);

  const std::string text = reg.RenderText();
  EXPECT_NE(text.find("# TYPE rs_test_requests_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("rs_test_requests_total{method=\"Search\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("rs_test_requests_total{method=\"Upsert\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE rs_test_bytes gauge"), std::string::npos) << text;
  EXPECT_NE(text.find("rs_test_bytes 42.5"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE rs_test_latency_seconds histogram"), std::string::npos) << text;
  // Buckets are cumulative and end with +Inf == count.
  EXPECT_NE(text.find("rs_test_latency_seconds_bucket{op=\"get\",le=\"0.1\"} 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("rs_test_latency_seconds_bucket{op=\"get\",le=\"1\"} 2"), std::string::npos)
      << text;
  EXPECT_NE(text.find("rs_test_latency_seconds_bucket{op=\"get\",le=\"+Inf\"} 3"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("rs_test_latency_seconds_count{op=\"get\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("rs_test_latency_seconds_sum{op=\"get\"} 5.55"), std::string::npos) << text;
  ExpectPromtoolAccepts(text);
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  MetricsRegistry reg;
  reg.GetCounter("rs_test_escape_total", "Help with a \\ backslash\nand newline.",
                 {{"path", "a\"b\\c\nd"}})
      .Inc();
  const std::string text = reg.RenderText();
  EXPECT_NE(text.find("path=\"a\\\"b\\\\c\\nd\""), std::string::npos) << text;
  ExpectPromtoolAccepts(text);
}

TEST(MetricsTest, SameNameAndLabelsIsTheSameMetric) {
  MetricsRegistry reg;
  Counter& a = reg.GetCounter("rs_test_same_total", "x", {{"k", "v"}});
  Counter& b = reg.GetCounter("rs_test_same_total", "x", {{"k", "v"}});
  EXPECT_EQ(&a, &b);
  Counter& c = reg.GetCounter("rs_test_same_total", "x", {{"k", "w"}});
  EXPECT_NE(&a, &c);
}

TEST(MetricsTest, HttpServerServesMetricsAndHealthz) {
  MetricsRegistry reg;
  reg.GetGauge("rs_test_served", "Served over HTTP.").Set(7);
  MetricsHttpServer http(&reg);
  auto port = http.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  std::string body;
  EXPECT_EQ(testing::HttpGet(*port, "/metrics", &body), 200);
  EXPECT_NE(body.find("rs_test_served 7"), std::string::npos) << body;
  EXPECT_EQ(testing::HttpGet(*port, "/healthz", &body), 200);
  EXPECT_EQ(testing::HttpGet(*port, "/nope", &body), 404);
  http.Stop();
  EXPECT_EQ(testing::HttpGet(*port, "/metrics", &body), -1);
}

TEST(MetricsTest, ObserveManyAddsThatManyObservations) {
  MetricsRegistry reg;
  auto& h = reg.GetHistogram("rs_test_tpot_seconds", "Per token.", {0.01, 0.1});
  h.Observe(0.05, 4);
  h.Observe(0.5);
  h.Observe(0.05, 0);  // nothing
  std::vector<uint64_t> cum;
  double sum = 0;
  uint64_t count = 0;
  h.Snapshot(&cum, &sum, &count);
  EXPECT_EQ(count, 5u);
  EXPECT_EQ(cum, (std::vector<uint64_t>{0, 4, 5}));
  EXPECT_DOUBLE_EQ(sum, 0.7);
}

TEST(MetricsTest, CollectorsRefreshValuesOnEveryRenderUntilRemoved) {
  MetricsRegistry reg;
  int queue_length = 3;
  Gauge& g = reg.GetGauge("rs_test_queue", "Queue length, read at scrape time.");
  const int id = reg.AddCollector([&] { g.Set(queue_length); });
  EXPECT_NE(reg.RenderText().find("rs_test_queue 3"), std::string::npos);
  queue_length = 5;
  EXPECT_NE(reg.RenderText().find("rs_test_queue 5"), std::string::npos);
  reg.RemoveCollector(id);
  queue_length = 9;
  EXPECT_NE(reg.RenderText().find("rs_test_queue 5"), std::string::npos);
}

}  // namespace
}  // namespace ragserve
