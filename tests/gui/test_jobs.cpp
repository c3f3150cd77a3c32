// JobRunner: results arrive on the GUI thread; a job started under a running job's name supersedes it (the
// old result is dropped and its Cancel flag set); failures arrive as messages; cancelAll stops a job mid-way.
#include <gtest/gtest.h>

#include <QCoreApplication>
#include <QThread>
#include <atomic>
#include <stdexcept>

#include "gui/models/Jobs.h"

namespace spkv::gui {
namespace {

TEST(JobRunner, SupersedesCancelsAndReportsFailures) {
  JobRunner jobs;
  std::atomic<bool> release{false}, first_saw_cancel{false};
  std::vector<int> delivered;
  Qt::HANDLE gui = QThread::currentThreadId(), worker = nullptr, delivered_on = nullptr;
  jobs.start<int>("x", [&](Cancel& c, const Progress&) {
    worker = QThread::currentThreadId();
    while (!release) QThread::msleep(1);
    first_saw_cancel = c.load();
    return 1;
  }, [&](int& v) { delivered.push_back(v); });
  jobs.start<int>("x", [&](Cancel&, const Progress&) { return 2; }, [&](int& v) {
    delivered.push_back(v);
    delivered_on = QThread::currentThreadId();
  });
  release = true;
  ASSERT_TRUE(jobs.waitIdle(10000));
  QThread::msleep(50);
  QCoreApplication::processEvents();
  EXPECT_EQ(delivered, std::vector<int>{2});  // the superseded result never arrives
  EXPECT_TRUE(first_saw_cancel);
  EXPECT_NE(worker, gui);
  EXPECT_EQ(delivered_on, gui);

  QString failure;
  QObject::connect(&jobs, &JobRunner::failed, [&](const QString& name, const QString& msg) { failure = name + ": " + msg; });
  jobs.start<int>("bad", [](Cancel&, const Progress&) -> int { throw std::runtime_error("log.h5: broken"); }, [](int&) {});
  ASSERT_TRUE(jobs.waitIdle(10000));
  EXPECT_EQ(failure, "bad: log.h5: broken");

  std::atomic<int> chunks{0};
  bool done = false;
  jobs.start<int>("long", [&](Cancel& c, const Progress& p) {
    for (int i = 0; i < 100000; ++i) {
      if (c.load()) throw Cancelled{};
      ++chunks, p(i / 100000.0);
      QThread::msleep(1);
    }
    return 0;
  }, [&](int&) { done = true; });
  while (chunks < 3) QThread::msleep(1);
  jobs.cancelAll();
  EXPECT_FALSE(jobs.busy());
  QThread::msleep(30);
  const int at_cancel = chunks;
  QThread::msleep(30);
  EXPECT_LE(chunks, at_cancel + 1);  // it stopped
  QCoreApplication::processEvents();
  EXPECT_FALSE(done);
}

}  // namespace
}  // namespace spkv::gui
