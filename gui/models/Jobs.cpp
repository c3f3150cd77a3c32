#include "gui/models/Jobs.h"

#include <QCoreApplication>
#include <QElapsedTimer>
#include <QThread>
#include <chrono>
#include <exception>

namespace spkv::gui {

JobRunner::JobRunner(QObject* parent) : QObject(parent) { m_pool.setMaxThreadCount(std::max(2, QThread::idealThreadCount())); }

JobRunner::~JobRunner() {
  cancelAll();
  m_pool.waitForDone();
}

void JobRunner::cancel(const QString& name) {
  auto c = m_running.take(name);
  if (!c) return;
  c->store(true);
  if (m_running.isEmpty()) emit busyChanged(false);
}

void JobRunner::cancelAll() {
  for (auto& c : m_running) c->store(true);
  const bool was = !m_running.isEmpty();
  m_running.clear();
  if (was) emit busyChanged(false);
}

bool JobRunner::waitIdle(int timeout_ms) {
  QElapsedTimer t;
  t.start();
  while (busy() && t.elapsed() < timeout_ms) {
    QCoreApplication::processEvents(QEventLoop::AllEvents, 20);
    QThread::msleep(1);
  }
  QCoreApplication::processEvents();
  return !busy();
}

void JobRunner::launch(const QString& name, std::function<void(Cancel&, const Progress&)> work, std::function<void()> done) {
  if (auto old = m_running.take(name)) old->store(true);
  auto flag = std::make_shared<Cancel>(false);
  const bool was_busy = busy();
  m_running.insert(name, flag);
  if (!was_busy) emit busyChanged(true);
  QPointer<JobRunner> self(this);
  // Called on the GUI thread: only the job still registered under its name reports.
  auto current = [self, name, flag] { return self && self->m_running.value(name) == flag && !flag->load(); };
  auto finish = [self, name, flag] {
    if (self && self->m_running.value(name) == flag) {
      self->m_running.remove(name);
      if (self->m_running.isEmpty()) emit self->busyChanged(false);
    }
  };
  m_pool.start([=] {
    auto last = std::chrono::steady_clock::now();
    const Progress report = [&](double f) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::milliseconds(100)) return;
      last = now;
      QMetaObject::invokeMethod(self, [=] { if (current()) emit self->progress(name, f); }, Qt::QueuedConnection);
    };
    try {
      work(*flag, report);
      QMetaObject::invokeMethod(self, [=] {
        if (current()) {
          finish();
          done();
          emit self->finished(name);
        }
      }, Qt::QueuedConnection);
    } catch (const Cancelled&) {
    } catch (const std::exception& e) {
      const QString msg = QString::fromStdString(e.what());
      QMetaObject::invokeMethod(self, [=] {
        if (current()) {
          finish();
          emit self->failed(name, msg);
        }
      }, Qt::QueuedConnection);
    }
  });
}

}  // namespace spkv::gui
